"""Training: the concave-regularised ticket method and the baselines, under one protocol.

Plain PyTorch, no Optuna: progress and early stopping go through the ``on_epoch`` callback
(an exception raised there ends the run and propagates, which is how a search prunes a trial).

Protocol shared by every method (METHOD.md §2):
- One *schedule* is ``TrainConfig.epochs`` epochs of Adam on the weights. Each method ends by
  training its final binary mask (the ticket) for one full schedule from weights rewound to
  optimiser step ``rewind_steps`` of its first training run (0 = the original initialisation).
- Selection uses the validation split; the test split is only evaluated for reporting.
- ``epochs`` in a result counts every training epoch the method spent, search phase included,
  so methods can be compared by training compute.

Methods (``METHODS``):
- ``ticket`` (the paper's): train weights and relaxed masks jointly on
  loss + lambda * sum R(m) for ``search_epochs``, binarise (threshold or exact density), rewind,
  train the ticket. Shown in ``compare`` under the penalty's name (``log``, ``l1``, ...).
- ``dense``: one schedule, no mask.
- ``imp``: iterative magnitude pruning with rewinding (Frankle & Carbin 2019; Frankle et al.
  2020): global, ``prune_rate`` of the surviving weights per round (the output layer at half
  that rate), rewind, retrain, until the density is reached (the last round lands on it).
- ``cs``: Continuous Sparsification (Savarese, Silva, Maire 2020): sigmoid masks whose
  temperature falls geometrically by ``cs_anneal`` within each of ``cs_rounds`` rounds, an l1
  pull on the soft mask, surviving logits reset between rounds, final mask = top entries.
- ``magnitude``: one schedule dense, one-shot global magnitude pruning, rewind, retrain.
- ``random``: a random mask at the density (uniform over weights), trained for one schedule.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hwsparse import masks as M
from hwsparse.data import Dataset
from hwsparse.deploy.compact import Silenced, silence
from hwsparse.errors import InputError
from hwsparse.penalties import PENALTIES, get_penalty, resolve_eps

ModelFactory = Callable[[], nn.Module]


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""


class SkipTicket(Exception):
    """Raised by a ``select`` hook: do not train this ticket (e.g. it cannot fit a budget)."""


# --- configuration -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    """One training schedule (shared by every method)."""

    epochs: int = 20  # epochs of one schedule (dense run, ticket, one IMP round)
    batch_size: int = 64
    lr: float = 1e-3  # Adam learning rate for the weights
    weight_decay: float = 0.0
    # optimiser step of the first run the ticket's weights rewind to (0 = init; a step past
    # the end of that run means its last weights)
    rewind_steps: int = 0
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda[:N]; auto picks CUDA when present

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise InputError(f"--epochs must be >= 1 (got {self.epochs})")
        if self.batch_size < 1:
            raise InputError(f"batch size must be >= 1 (got {self.batch_size})")
        if not self.lr > 0:
            raise InputError(f"learning rate must be > 0 (got {self.lr})")
        if self.rewind_steps < 0:
            raise InputError(f"rewind steps must be >= 0 (got {self.rewind_steps})")


@dataclass(frozen=True)
class TicketConfig:
    """The relaxed-mask method (and the knobs an Optuna search tunes)."""

    penalty: str = "log"  # see hwsparse.penalties.PENALTIES
    strength: float = 1e-3  # lambda in loss + lambda * sum R(m) (the start value when auto)
    auto_strength: bool = False  # adapt lambda to reach `density` (needs density)
    eps: float | None = None  # concavity scale (None: the penalty's default; l1 ignores it)
    mask_lr: float = 0.01  # Adam learning rate of the masks (no weight decay on masks)
    search_epochs: int = 30  # epochs of the joint weights+masks phase
    threshold: float = 0.5  # binarisation threshold when no density is asked for
    density: float | None = None  # exact target density (top-k) instead of the threshold
    mask: M.MaskConfig = field(default_factory=M.MaskConfig)
    # --strength auto's controller (see _PenaltyTerm): share of the search phase over which
    # the density path reaches the target, and log-lambda change per step at error 1
    auto_ramp: float = 0.6
    auto_rate: float = 0.02

    def __post_init__(self) -> None:
        get_penalty(self.penalty)
        resolve_eps(self.penalty, self.eps)
        if not self.strength >= 0:
            raise InputError(f"--strength must be >= 0 (got {self.strength})")
        if not self.mask_lr > 0:
            raise InputError(f"mask learning rate must be > 0 (got {self.mask_lr})")
        if self.search_epochs < 1:
            raise InputError(f"search epochs must be >= 1 (got {self.search_epochs})")
        if not 0 <= self.threshold < 1:
            raise InputError(f"--threshold must be in [0, 1) (got {self.threshold})")
        if self.density is not None:
            M.check_density(self.density)
        if self.auto_strength and self.density is None:
            raise InputError("--strength auto needs a target --density")
        if not 0 < self.auto_ramp <= 1:
            raise InputError(f"auto_ramp must be in (0, 1] (got {self.auto_ramp})")
        if not self.auto_rate > 0:
            raise InputError(f"auto_rate must be > 0 (got {self.auto_rate})")


@dataclass(frozen=True)
class BaselineConfig:
    """Settings of the baselines that are not part of the shared schedule."""

    prune_rate: float = 0.2  # IMP: fraction of surviving weights pruned per round
    cs_rounds: int = 3  # CS: rounds of mask search
    cs_epochs: int = 10  # CS: epochs per round
    cs_strength: float = 1e-3  # CS: lambda of the l1 pull on the soft mask (val-selected)
    cs_temperature: float = 1.0  # CS: initial temperature (1 / beta)
    cs_anneal: float = 200.0  # CS: temperature falls by this factor within a round
    cs_mask_lr: float = 0.02


# --- results -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EpochInfo:
    """What ``on_epoch`` receives after every training epoch."""

    phase: str  # e.g. "search", "ticket", "dense", "imp round 3/14"
    epoch: int  # 1-based within the phase
    epochs: int  # epochs of the phase
    loss: float  # mean training loss of the epoch (penalty included)
    val_accuracy: float
    density: float  # current density (soft mask above threshold in the search phase)
    seconds: float  # wall time of the epoch


@dataclass
class RunResult:
    """Outcome of one method run: the ticket, its accuracy and what it cost to find."""

    method: str
    status: str  # "ok", "diverged", or "skipped" (ticket not trained, see run_ticket)
    val_accuracy: float
    test_accuracy: float
    density: float  # kept / all Conv/Linear weights
    epochs: int  # all training epochs spent
    steps: int  # all optimiser steps spent
    seconds: float
    device: str
    model: nn.Module | None  # plain module, pruned weights zeroed (None when diverged)
    masks: M.Masks
    layers: list[M.LayerDensity]
    message: str = ""
    history: list[EpochInfo] = field(default_factory=list)
    # lambda of the penalty when the search phase ended (auto strength moves it; None: no
    # penalty term, e.g. a baseline)
    strength_final: float | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "status": self.status,
            "val_accuracy": self.val_accuracy,
            "test_accuracy": self.test_accuracy,
            "density": self.density,
            "epochs": self.epochs,
            "steps": self.steps,
            "seconds": round(self.seconds, 3),
            "device": self.device,
            "message": self.message,
            "strength_final": self.strength_final,
        }


OnEpoch = Callable[[EpochInfo], None]


# --- the training loop ---------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; otherwise the named torch device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"unknown --device {name!r}; valid: auto, cpu, cuda, cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda asked for, but no CUDA device is available; use auto")
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"unsupported --device {name!r}; valid: auto, cpu, cuda, cuda:N")
    return device


class _Run:
    """State shared by the phases of one method run: data on device, counters, callback."""

    def __init__(self, data: Dataset, config: TrainConfig, on_epoch: OnEpoch | None) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        self.on_epoch = on_epoch
        d = self.device
        self.x_train, self.y_train = data.x_train.to(d), data.y_train.to(d)
        self.x_val, self.y_val = data.x_val.to(d), data.y_val.to(d)
        self.x_test, self.y_test = data.x_test.to(d), data.y_test.to(d)
        self.input_shape = data.input_shape
        self.silenced: Silenced | None = None
        self.generator = torch.Generator().manual_seed(config.seed)
        self.epochs = 0
        self.steps = 0
        self.history: list[EpochInfo] = []
        self.started = time.perf_counter()

    def autocast(self) -> Any:
        # Mixed precision on CUDA only: bf16 autocast needs no loss scaling.
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    @torch.no_grad()
    def accuracy(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
        was_training = model.training
        model.eval()
        correct = 0
        with self.autocast():
            for i in range(0, len(x), 2048):
                correct += int((model(x[i : i + 2048]).argmax(1) == y[i : i + 2048]).sum())
        model.train(was_training)
        return correct / max(len(x), 1)

    def train(
        self,
        model: nn.Module,
        epochs: int,
        phase: str,
        *,
        relaxed: dict[str, M.RelaxedMask] | None = None,
        penalty: _PenaltyTerm | None = None,
        mask_lr: float = 0.0,
        temperature: Callable[[float], float] | None = None,
        snapshot_step: int | None = None,
        density: Callable[[], float] | None = None,
    ) -> dict[str, torch.Tensor] | None:
        """Train ``model`` for ``epochs``; returns the weight snapshot at ``snapshot_step``.

        ``relaxed``/``penalty``/``mask_lr`` make it the joint weights+masks phase;
        ``temperature(progress in [0, 1])`` anneals sigmoid masks per step.
        """
        cfg = self.config
        mask_params = [m.score for m in (relaxed or {}).values()]
        mask_ids = {id(p) for p in mask_params}
        weights = [p for p in model.parameters() if p.requires_grad and id(p) not in mask_ids]
        groups: list[dict[str, Any]] = [{"params": weights, "weight_decay": cfg.weight_decay}]
        if mask_params:
            groups.append({"params": mask_params, "lr": mask_lr, "weight_decay": 0.0})
        # fused Adam: one kernel for all tensors (masks double the parameter count)
        optimizer = torch.optim.Adam(groups, lr=cfg.lr, fused=True)
        n = len(self.x_train)
        steps_per_epoch = math.ceil(n / cfg.batch_size)
        total_steps = epochs * steps_per_epoch
        snapshot = weight_state(model) if snapshot_step == 0 else None
        step = 0
        model.train()
        for epoch in range(1, epochs + 1):
            t0 = time.perf_counter()
            order = torch.randperm(n, generator=self.generator).to(self.device)
            loss_sum = torch.zeros((), device=self.device)
            for i in range(0, n, cfg.batch_size):
                if temperature is not None and relaxed:
                    M.set_temperature(relaxed, temperature(step / max(total_steps - 1, 1)))
                idx = order[i : i + cfg.batch_size]
                with self.autocast():
                    loss = F.cross_entropy(model(self.x_train[idx]), self.y_train[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                if penalty is not None:
                    penalty.add_grad()
                optimizer.step()
                if relaxed:
                    M.project(relaxed)
                if penalty is not None:
                    penalty.after_step(step / max(total_steps - 1, 1))
                loss_sum += loss.detach() * len(idx)
                step += 1
                if snapshot_step is not None and step == snapshot_step:
                    snapshot = weight_state(model)
            mean_loss = float(loss_sum) / n + (penalty.value() if penalty is not None else 0.0)
            self.epochs += 1
            self.steps += steps_per_epoch
            if not math.isfinite(mean_loss):
                raise Diverged(f"training loss became {mean_loss} in {phase} epoch {epoch}")
            info = EpochInfo(
                phase=phase,
                epoch=epoch,
                epochs=epochs,
                loss=mean_loss,
                val_accuracy=self.accuracy(model, self.x_val, self.y_val),
                density=density() if density else 1.0,
                seconds=time.perf_counter() - t0,
            )
            self.history.append(info)
            if self.on_epoch is not None:
                self.on_epoch(info)
        if snapshot_step is not None and snapshot is None:
            # Asked to rewind past the end of the run: rewind to where it ended (documented).
            snapshot = weight_state(model)
        return snapshot

    def silence(self, model: nn.Module, masks: M.Masks) -> None:
        """Keep the ticket's dead channels exactly zero while it trains (deploy/compact.py)."""
        self.unsilence()
        self.silenced = silence(model, self.input_shape, masks)

    def unsilence(self) -> None:
        if self.silenced is not None:
            self.silenced.remove()
            self.silenced = None

    def result(
        self, method: str, model: nn.Module, masks: M.Masks, message: str = ""
    ) -> RunResult:
        """Bake the masks into ``model`` and evaluate it on val and test."""
        self.unsilence()
        M.detach_masks(model, bake=True)
        model.eval()
        return RunResult(
            method=method,
            status="ok",
            val_accuracy=self.accuracy(model, self.x_val, self.y_val),
            test_accuracy=self.accuracy(model, self.x_test, self.y_test),
            density=M.global_density(model, masks),
            epochs=self.epochs,
            steps=self.steps,
            seconds=time.perf_counter() - self.started,
            device=str(self.device),
            model=model.cpu(),
            masks={k: v.cpu() for k, v in masks.items()},
            layers=M.layer_densities(model, masks),
            message=message,
            history=self.history,
        )

    def diverged(self, method: str, exc: Diverged) -> RunResult:
        return RunResult(
            method=method,
            status="diverged",
            val_accuracy=float("nan"),
            test_accuracy=float("nan"),
            density=float("nan"),
            epochs=self.epochs,
            steps=self.steps,
            seconds=time.perf_counter() - self.started,
            device=str(self.device),
            model=None,
            masks={},
            layers=[],
            message=str(exc),
            history=self.history,
        )


def weight_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the model's weights and buffers under their plain names, masks left out.

    ``layer.parametrizations.weight.original`` is stored as ``layer.weight``; mask scores and
    fixed masks are dropped, so the state loads into the bare model.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if ".parametrizations.weight.original" in key:
            out[key.replace(".parametrizations.weight.original", ".weight")] = value.clone()
        elif ".parametrizations." not in key:
            out[key] = value.clone()
    return out


def _rewind(
    model: nn.Module, state: dict[str, torch.Tensor], masks: M.Masks, run: _Run
) -> nn.Module:
    """Bare ``model`` with ``state`` loaded, the binary ``masks`` fixed on it, dead channels
    silenced (exactly zero until ``run.result``, so the trained ticket is the costed network)."""
    M.detach_masks(model, bake=False)
    model.load_state_dict(state)
    M.attach_fixed(model, masks)
    run.silence(model, masks)
    return model


def _build(factory: ModelFactory, run: _Run) -> nn.Module:
    torch.manual_seed(run.config.seed)
    return factory().to(run.device)


def _guard(method: str, run: _Run, body: Callable[[], RunResult]) -> RunResult:
    try:
        return body()
    except Diverged as exc:
        return run.diverged(method, exc)


# --- the method ----------------------------------------------------------------------------------


class _PenaltyTerm:
    """``lambda * sum R(m)`` over all mask entries (channel entries weighted by their size).

    With ``target`` set, lambda is a Lagrange multiplier for "density <= target" and follows
    dual ascent in log space after every step: it grows while the soft-mask density is above
    the target and shrinks when it falls below, so the search phase ends near the asked density
    whatever the dataset (our *choice*, ``--strength auto``; a fixed lambda is the paper's).
    """

    # The controller's ramp and rate are TicketConfig.auto_ramp / auto_rate.
    _DOWN = 10.0  # 10x faster when below: concave pulls collapse entries with momentum
    _HEADROOM = 1.1  # aim a little above the target: top-k then trims to it exactly

    def __init__(
        self, relaxed: dict[str, M.RelaxedMask], ticket: TicketConfig, target: float | None
    ) -> None:
        self.relaxed = relaxed
        self.fn = get_penalty(ticket.penalty)
        self.eps = resolve_eps(ticket.penalty, ticket.eps)
        self.lam = ticket.strength
        self.threshold = ticket.threshold
        self.target = None if target is None else target * self._HEADROOM
        self.ramp, self.rate = ticket.auto_ramp, ticket.auto_rate

    @torch.no_grad()
    def value(self) -> float:
        """lambda * sum R(m) at the current masks (for reporting)."""
        terms = [self.fn(m.soft(), self.eps).sum() * m.entry_size for m in self.relaxed.values()]
        return self.lam * float(torch.stack(terms).sum())

    @torch.no_grad()
    def add_grad(self) -> None:
        """Add d(lambda * sum R(m)) / d(score) to the mask gradients, in closed form.

        Same gradient as back-propagating the penalty, at a fraction of the cost (it runs on
        every step): lambda * entry_size * R'(m), times dm/ds = m (1 - m) / T for sigmoid masks.
        """
        for m in self.relaxed.values():
            soft = m.soft()
            grad = self.fn.slope(soft, self.eps).mul_(self.lam * m.entry_size)
            if m.param == "sigmoid":
                grad.mul_(soft * (1 - soft) / m.temperature)
            if m.score.grad is None:
                m.score.grad = grad
            else:
                m.score.grad.add_(grad)

    def after_step(self, progress: float) -> None:
        """Dual ascent towards a density path that falls geometrically from 1 to the target
        over the first ``auto_ramp`` of the search phase and then holds it."""
        if self.target is None:
            return
        goal = self.target ** min(1.0, progress / self.ramp)
        error = (M.soft_density(self.relaxed, self.threshold) - goal) / goal
        rate = self.rate if error > 0 else self.rate * self._DOWN
        self.lam *= math.exp(rate * max(-1.0, min(1.0, error)))


def _temperature_schedule(cfg: M.MaskConfig) -> Callable[[float], float] | None:
    if cfg.param != "sigmoid":
        return None
    t0, ratio = cfg.temperature, cfg.anneal
    return lambda progress: t0 * ratio ** (-progress)


def run_ticket(
    factory: ModelFactory,
    data: Dataset,
    ticket: TicketConfig,
    config: TrainConfig,
    on_epoch: OnEpoch | None = None,
    select: Callable[[nn.Module, M.Masks], M.Masks] | None = None,
) -> RunResult:
    """The paper's method: relaxed masks + concave penalty -> binarise -> rewind -> retrain.

    ``select(model, masks)`` may replace the binary masks before the ticket is trained (the
    search cuts a candidate to fit a device budget there; ``model`` still carries its relaxed
    masks). Raising :class:`SkipTicket` in it ends the run without training the ticket
    (status ``skipped``; the binarised search-phase network is evaluated instead).
    """
    run = _Run(data, config, on_epoch)
    method = ticket.penalty

    def body() -> RunResult:
        model = _build(factory, run)
        relaxed = M.attach_relaxed(model, ticket.mask)
        term = (
            _PenaltyTerm(relaxed, ticket, ticket.density if ticket.auto_strength else None)
            if ticket.strength > 0
            else None
        )

        def lam() -> float | None:
            return None if term is None else float(term.lam)

        snapshot = run.train(
            model,
            ticket.search_epochs,
            "search",
            relaxed=relaxed,
            penalty=term,
            mask_lr=ticket.mask_lr,
            temperature=_temperature_schedule(ticket.mask),
            snapshot_step=config.rewind_steps,
            density=lambda: M.soft_density(relaxed, ticket.threshold),
        )
        assert snapshot is not None
        masks = M.binarize(model, threshold=ticket.threshold, density=ticket.density)
        message = _density_note(model, masks, ticket.density)
        if select is not None:
            try:
                masks = select(model, masks)
            except SkipTicket as exc:
                # Evaluate the binarised search-phase network as it is, without retraining.
                M.detach_masks(model, bake=False)
                M.attach_fixed(model, masks)
                result = run.result(method, model, masks, str(exc))
                result.status = "skipped"
                result.strength_final = lam()
                return result
        _rewind(model, snapshot, masks, run)
        kept = M.global_density(model, masks)
        run.train(model, config.epochs, "ticket", density=lambda: kept)
        result = run.result(method, model, masks, message)
        result.strength_final = lam()
        return result

    return _guard(method, run, body)


def _density_note(model: nn.Module, masks: M.Masks, target: float | None) -> str:
    """Say so when the relaxed mask itself kept less than asked (not a granularity rounding)."""
    if target is None:
        return ""
    rows = M.layer_densities(model, masks)
    total = sum(r.total for r in rows)
    # one entry of the coarsest mask: a channel mask can only move in whole rows
    step = max(m[0].numel() if m.dim() > 1 else 1 for m in masks.values()) / total
    got = M.global_density(model, masks)
    if got < target - step:
        return (
            f"the relaxed mask kept fewer entries than asked: density {got:.4f} < {target:g} "
            "(lower --strength to keep more)"
        )
    return ""


# --- baselines -----------------------------------------------------------------------------------


def run_dense(
    factory: ModelFactory, data: Dataset, config: TrainConfig, on_epoch: OnEpoch | None = None
) -> RunResult:
    run = _Run(data, config, on_epoch)

    def body() -> RunResult:
        model = _build(factory, run)
        run.train(model, config.epochs, "dense")
        return run.result("dense", model, {})

    return _guard("dense", run, body)


def _magnitudes(model: nn.Module, masks: M.Masks, names: list[str]) -> dict[str, torch.Tensor]:
    """|w| of surviving weights (pruned ones score -1 so they are never chosen again)."""
    modules = dict(model.named_modules())
    out = {}
    for n in names:
        w = M.raw_weight(modules[n]).detach().abs()
        out[n] = torch.where(masks[n] > 0, w, torch.full_like(w, -1.0)) if n in masks else w
    return out


def _layer_names(model: nn.Module, ticket_mask: M.MaskConfig) -> list[str]:
    return [
        n
        for n, _ in M.prunable_layers(
            model, mask_first=ticket_mask.mask_first, mask_last=ticket_mask.mask_last
        )
    ]


def run_imp(
    factory: ModelFactory,
    data: Dataset,
    density: float,
    config: TrainConfig,
    baseline: BaselineConfig | None = None,
    mask_config: M.MaskConfig | None = None,
    on_epoch: OnEpoch | None = None,
) -> RunResult:
    """Iterative magnitude pruning with rewinding, global, until ``density`` is reached."""
    baseline = baseline or BaselineConfig()
    mask_config = mask_config or M.MaskConfig()
    M.check_density(density)
    run = _Run(data, config, on_epoch)

    def body() -> RunResult:
        model = _build(factory, run)
        names = _layer_names(model, mask_config)
        last = names[-1] if mask_config.mask_last else None
        snapshot = run.train(model, config.epochs, "imp dense", snapshot_step=config.rewind_steps)
        assert snapshot is not None
        rounds = _imp_rounds(density, baseline.prune_rate)
        current = 1.0
        masks: M.Masks = {}
        for r in range(1, rounds + 1):
            current = max(density, current * (1 - baseline.prune_rate))
            scores = _magnitudes(model, masks, names)
            if last is not None and r < rounds:
                # LTH practice: the output layer is pruned at half the rate of the others.
                scores = _imp_output_layer(scores, masks, last, baseline.prune_rate / 2)
            masks = M.top_k_masks(model, scores, scores, current)
            _rewind(model, snapshot, masks, run)
            run.train(model, config.epochs, f"imp round {r}/{rounds}")
        return run.result("imp", model, masks)

    return _guard("imp", run, body)


def _imp_rounds(density: float, rate: float) -> int:
    if density >= 1:
        return 0
    return math.ceil(math.log(density) / math.log(1 - rate) - 1e-9)


def _imp_output_layer(
    scores: dict[str, torch.Tensor], masks: M.Masks, last: str, rate: float
) -> dict[str, torch.Tensor]:
    """Pre-select the output layer's survivors at ``rate`` and make them win the global sort."""
    s = scores[last]
    alive = s >= 0
    keep_n = int(alive.sum()) - int(round(int(alive.sum()) * rate))
    flat = s.flatten()
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[torch.topk(flat, keep_n).indices] = True
    big = float(max(float(v.max()) for v in scores.values())) + 1.0
    out = dict(scores)
    out[last] = torch.where(keep.view_as(s), s + big, torch.full_like(s, -1.0))
    return out


def run_magnitude(
    factory: ModelFactory,
    data: Dataset,
    density: float,
    config: TrainConfig,
    mask_config: M.MaskConfig | None = None,
    on_epoch: OnEpoch | None = None,
) -> RunResult:
    """One-shot global magnitude pruning after one dense schedule, then rewind and retrain."""
    mask_config = mask_config or M.MaskConfig()
    M.check_density(density)
    run = _Run(data, config, on_epoch)

    def body() -> RunResult:
        model = _build(factory, run)
        names = _layer_names(model, mask_config)
        snapshot = run.train(model, config.epochs, "dense", snapshot_step=config.rewind_steps)
        assert snapshot is not None
        scores = _magnitudes(model, {}, names)
        masks = M.top_k_masks(model, scores, scores, density)
        _rewind(model, snapshot, masks, run)
        run.train(model, config.epochs, "ticket")
        return run.result("magnitude", model, masks)

    return _guard("magnitude", run, body)


def run_random(
    factory: ModelFactory,
    data: Dataset,
    density: float,
    config: TrainConfig,
    mask_config: M.MaskConfig | None = None,
    on_epoch: OnEpoch | None = None,
) -> RunResult:
    """A uniformly random mask at ``density``, trained for one schedule from initialisation."""
    mask_config = mask_config or M.MaskConfig()
    M.check_density(density)
    run = _Run(data, config, on_epoch)

    def body() -> RunResult:
        model = _build(factory, run)
        names = _layer_names(model, mask_config)
        gen = torch.Generator().manual_seed(config.seed + 1)
        modules = dict(model.named_modules())
        scores = {n: torch.rand(M.raw_weight(modules[n]).shape, generator=gen) for n in names}
        masks = M.top_k_masks(model, scores, scores, density)
        M.attach_fixed(model, masks)
        run.silence(model, masks)
        run.train(model, config.epochs, "ticket")
        return run.result("random", model, masks)

    return _guard("random", run, body)


def run_cs(
    factory: ModelFactory,
    data: Dataset,
    density: float,
    config: TrainConfig,
    baseline: BaselineConfig | None = None,
    mask_config: M.MaskConfig | None = None,
    on_epoch: OnEpoch | None = None,
) -> RunResult:
    """Continuous Sparsification: annealed sigmoid masks in rounds, then the ticket."""
    baseline = baseline or BaselineConfig()
    mask_config = replace(
        mask_config or M.MaskConfig(),
        param="sigmoid",
        temperature=baseline.cs_temperature,
        anneal=baseline.cs_anneal,
    )
    M.check_density(density)
    run = _Run(data, config, on_epoch)
    ticket = TicketConfig(
        penalty="l1",
        strength=baseline.cs_strength,
        mask_lr=baseline.cs_mask_lr,
        search_epochs=baseline.cs_epochs,
        density=density,
        mask=mask_config,
    )

    def body() -> RunResult:
        model = _build(factory, run)
        relaxed = M.attach_relaxed(model, mask_config)
        init_score = mask_config.sigmoid_init * mask_config.temperature
        snapshot: dict[str, torch.Tensor] | None = None
        for r in range(1, baseline.cs_rounds + 1):
            if r > 1:
                with torch.no_grad():  # surviving logits restart, removed ones stay removed
                    for m in relaxed.values():
                        m.score.copy_(torch.where(m.score > 0, init_score, m.score))
            got = run.train(
                model,
                baseline.cs_epochs,
                f"cs round {r}/{baseline.cs_rounds}",
                relaxed=relaxed,
                penalty=_PenaltyTerm(relaxed, ticket, None),
                mask_lr=ticket.mask_lr,
                temperature=_temperature_schedule(mask_config),
                snapshot_step=config.rewind_steps if r == 1 else None,
                density=lambda: M.soft_density(relaxed, 0.5),
            )
            snapshot = snapshot or got
        assert snapshot is not None
        # Rank by the logits themselves: at the final temperature sigmoid(s / T) underflows to
        # exactly 0 for many entries, and ties at 0 would lose the ranking CS learned.
        modules = dict(model.named_modules())
        logits = {n: m.score.detach() for n, m in relaxed.items()}
        tie = {n: M.magnitude_tiebreak(M.raw_weight(modules[n]).detach(), logits[n].shape)
               for n in relaxed}  # fmt: skip
        masks = M.top_k_masks(model, logits, tie, density)
        _rewind(model, snapshot, masks, run)
        run.train(model, config.epochs, "ticket")
        return run.result("cs", model, masks)

    return _guard("cs", run, body)


# --- dispatch used by `compare` ------------------------------------------------------------------

BASELINES = ("dense", "imp", "cs", "magnitude", "random")


def run_method(
    method: str,
    factory: ModelFactory,
    data: Dataset,
    density: float,
    config: TrainConfig,
    ticket: TicketConfig | None = None,
    baseline: BaselineConfig | None = None,
    on_epoch: OnEpoch | None = None,
) -> RunResult:
    """Run ``method`` (a penalty name or a baseline) at ``density`` under the shared protocol."""
    ticket = ticket or TicketConfig()
    mask_cfg = ticket.mask
    if method == "dense":
        return run_dense(factory, data, config, on_epoch)
    if method == "imp":
        return run_imp(factory, data, density, config, baseline, mask_cfg, on_epoch)
    if method == "cs":
        return run_cs(factory, data, density, config, baseline, mask_cfg, on_epoch)
    if method == "magnitude":
        return run_magnitude(factory, data, density, config, mask_cfg, on_epoch)
    if method == "random":
        return run_random(factory, data, density, config, mask_cfg, on_epoch)
    get_penalty(method)  # raises with the valid penalty names
    return run_ticket(
        factory, data, replace(ticket, penalty=method, density=density), config, on_epoch
    )


def method_names() -> list[str]:
    """What `compare --methods` accepts: every penalty, then the baselines."""
    return [*PENALTIES, *BASELINES]


def planned_epochs(
    method: str,
    density: float,
    config: TrainConfig,
    ticket: TicketConfig | None = None,
    baseline: BaselineConfig | None = None,
) -> int:
    """Training epochs ``run_method`` will spend (for progress bars and compute budgets)."""
    ticket = ticket or TicketConfig()
    baseline = baseline or BaselineConfig()
    e = config.epochs
    if method == "dense" or method == "random":
        return e
    if method == "magnitude":
        return 2 * e
    if method == "imp":
        return (_imp_rounds(density, baseline.prune_rate) + 1) * e
    if method == "cs":
        return baseline.cs_rounds * baseline.cs_epochs + e
    return ticket.search_epochs + e
