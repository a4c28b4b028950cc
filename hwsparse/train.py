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
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from hwsparse import accel as A
from hwsparse import masks as M
from hwsparse.data import Dataset
from hwsparse.errors import InputError, lookup
from hwsparse.penalties import PENALTIES, get_penalty, resolve_eps
from hwsparse.phase import Diverged as Diverged
from hwsparse.phase import EpochInfo as EpochInfo
from hwsparse.phase import OnEpoch as OnEpoch
from hwsparse.phase import SearchPhase, Trainer, search_phase
from hwsparse.phase import weight_state as weight_state

ModelFactory = Callable[[], nn.Module]


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
    # autocast dtype of the training forward pass (hwsparse.accel.select_precision): auto |
    # fp32 | bf16 | fp16; evaluation is always fp32
    precision: str = "auto"
    deterministic: bool = False  # deterministic torch algorithms (slower on a GPU)

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise InputError(f"--epochs must be >= 1 (got {self.epochs})")
        if self.batch_size < 1:
            raise InputError(f"batch size must be >= 1 (got {self.batch_size})")
        if not self.lr > 0:
            raise InputError(f"learning rate must be > 0 (got {self.lr})")
        if self.rewind_steps < 0:
            raise InputError(f"rewind steps must be >= 0 (got {self.rewind_steps})")
        if self.precision not in A.PRECISIONS:
            valid = ", ".join(A.PRECISIONS)
            raise InputError(f"unknown --precision {self.precision!r}; valid: {valid}")


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
    # --strength auto's controller (hwsparse.phase.PenaltyTerm): share of the search phase
    # over which the density path reaches the target, and log-lambda change per step at error 1.
    # Selected on validation over digits and mnist10k (benchmarks/tickets/README.md): with
    # 0.6 / 0.02 the masks (Adam) fell below the slow path within an epoch on mnist10k, the
    # 10x faster decrease drove lambda to ~1e-40 and the search phase ended far denser than
    # asked (log at 1 %: 87 % vs IMP 94 %)
    auto_ramp: float = 0.2
    auto_rate: float = 0.005

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


# --- the training loop ---------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; otherwise the named torch device (checked)."""
    return A.resolve_device(name)


def result_of(
    run: Trainer, method: str, model: nn.Module, masks: M.Masks, message: str = ""
) -> RunResult:
    """Bake the masks into ``model`` and evaluate it on val and test (the same evaluation)."""
    run.unsilence()
    M.detach_masks(model, bake=True)
    model.eval()
    return RunResult(
        method=method,
        status="ok",
        val_accuracy=run.accuracy(model, run.x_val, run.y_val),
        test_accuracy=run.accuracy(model, run.x_test, run.y_test),
        density=M.global_density(model, masks),
        epochs=run.epochs,
        steps=run.steps,
        seconds=time.perf_counter() - run.started,
        device=str(run.device),
        model=model.cpu(),
        masks={k: v.cpu() for k, v in masks.items()},
        layers=M.layer_densities(model, masks),
        message=message,
        history=run.history,
    )


def diverged_result(run: Trainer, method: str, exc: Diverged) -> RunResult:
    return RunResult(
        method=method,
        status="diverged",
        val_accuracy=float("nan"),
        test_accuracy=float("nan"),
        density=float("nan"),
        epochs=run.epochs,
        steps=run.steps,
        seconds=time.perf_counter() - run.started,
        device=str(run.device),
        model=None,
        masks={},
        layers=[],
        message=str(exc),
        history=run.history,
    )


def _rewind(
    model: nn.Module, state: dict[str, torch.Tensor], masks: M.Masks, run: Trainer
) -> nn.Module:
    """Bare ``model`` with ``state`` loaded, the binary ``masks`` fixed on it, dead channels
    silenced (exactly zero until ``run.result``, so the trained ticket is the costed network)."""
    M.detach_masks(model, bake=False)
    model.load_state_dict(state)
    M.attach_fixed(model, masks)
    run.silence(model, masks)
    return model


def _build(factory: ModelFactory, run: Trainer) -> nn.Module:
    torch.manual_seed(run.config.seed)
    return factory().to(run.device)


def _guard(method: str, run: Trainer, body: Callable[[], RunResult]) -> RunResult:
    try:
        with A.deterministic(run.config.deterministic):
            return body()
    except Diverged as exc:
        return diverged_result(run, method, exc)


# --- the method ----------------------------------------------------------------------------------


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
    run = Trainer(data, config, on_epoch)
    method = ticket.penalty

    def body() -> RunResult:
        model = _build(factory, run)
        relaxed = M.attach_relaxed(model, ticket.mask)
        found = search_phase(
            run, model, relaxed, SearchPhase.of(ticket), snapshot_step=config.rewind_steps
        )
        snapshot = found.snapshot
        assert snapshot is not None
        masks, message, skipped = choose_masks(run, model, ticket, select)
        if skipped is not None:
            skipped.strength_final = found.strength_final
            return skipped
        _rewind(model, snapshot, masks, run)
        kept = M.global_density(model, masks)
        run.fit(model, config.epochs, "ticket", density=lambda: kept)
        result = result_of(run, method, model, masks, message)
        result.strength_final = found.strength_final
        return result

    return _guard(method, run, body)


def choose_masks(
    run: Trainer,
    model: nn.Module,
    ticket: TicketConfig,
    select: Callable[[nn.Module, M.Masks], M.Masks] | None,
) -> tuple[M.Masks, str, RunResult | None]:
    """After the search phase: binarise ``model``'s relaxed masks, let ``select`` cut them.

    Returns the masks, a note on their density, and, when ``select`` raised
    :class:`SkipTicket`, the result of the binarised search-phase network as it is (not
    retrained; ``model`` is then baked).
    """
    masks = M.binarize(model, threshold=ticket.threshold, density=ticket.density)
    message = _density_note(model, masks, ticket.density)
    if select is None:
        return masks, message, None
    try:
        return select(model, masks), message, None
    except SkipTicket as exc:
        M.detach_masks(model, bake=False)
        M.attach_fixed(model, masks)
        result = result_of(run, ticket.penalty, model, masks, str(exc))
        result.status = "skipped"
        return masks, message, result


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
    run = Trainer(data, config, on_epoch)

    def body() -> RunResult:
        model = _build(factory, run)
        run.fit(model, config.epochs, "dense")
        return result_of(run, "dense", model, {})

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
    run = Trainer(data, config, on_epoch)

    def body() -> RunResult:
        model = _build(factory, run)
        names = _layer_names(model, mask_config)
        last = names[-1] if mask_config.mask_last else None
        snapshot = run.fit(model, config.epochs, "imp dense", snapshot_step=config.rewind_steps)
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
            run.fit(model, config.epochs, f"imp round {r}/{rounds}")
        return result_of(run, "imp", model, masks)

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
    run = Trainer(data, config, on_epoch)

    def body() -> RunResult:
        model = _build(factory, run)
        names = _layer_names(model, mask_config)
        snapshot = run.fit(model, config.epochs, "dense", snapshot_step=config.rewind_steps)
        assert snapshot is not None
        scores = _magnitudes(model, {}, names)
        masks = M.top_k_masks(model, scores, scores, density)
        _rewind(model, snapshot, masks, run)
        run.fit(model, config.epochs, "ticket")
        return result_of(run, "magnitude", model, masks)

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
    run = Trainer(data, config, on_epoch)

    def body() -> RunResult:
        model = _build(factory, run)
        names = _layer_names(model, mask_config)
        gen = torch.Generator().manual_seed(config.seed + 1)
        modules = dict(model.named_modules())
        scores = {n: torch.rand(M.raw_weight(modules[n]).shape, generator=gen) for n in names}
        masks = M.top_k_masks(model, scores, scores, density)
        M.attach_fixed(model, masks)
        run.silence(model, masks)
        run.fit(model, config.epochs, "ticket")
        return result_of(run, "random", model, masks)

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
    run = Trainer(data, config, on_epoch)
    ticket = TicketConfig(
        penalty="l1",
        strength=baseline.cs_strength,
        mask_lr=baseline.cs_mask_lr,
        search_epochs=baseline.cs_epochs,
        density=density,
        mask=mask_config,
    )
    spec = SearchPhase.of(ticket)

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
            got = search_phase(
                run,
                model,
                relaxed,
                spec,
                name=f"cs round {r}/{baseline.cs_rounds}",
                snapshot_step=config.rewind_steps if r == 1 else None,
            ).snapshot
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
        run.fit(model, config.epochs, "ticket")
        return result_of(run, "cs", model, masks)

    return _guard("cs", run, body)


# --- the baselines registry, used by `compare` --------------------------------------------------


@dataclass(frozen=True)
class Baseline:
    """A baseline method: how to run it and how many epochs it spends (keyed by its name)."""

    name: str
    run: Callable[
        [ModelFactory, Dataset, float, TrainConfig, M.MaskConfig, BaselineConfig, OnEpoch | None],
        RunResult,
    ]
    epochs: Callable[[float, TrainConfig, BaselineConfig], int]
    description: str


BASELINES: dict[str, Baseline] = {
    b.name: b
    for b in (
        Baseline(
            "dense",
            lambda f, d, density, c, m, b, cb: run_dense(f, d, c, cb),
            lambda density, c, b: c.epochs,
            "one schedule, no mask",
        ),
        Baseline(
            "imp",
            lambda f, d, density, c, m, b, cb: run_imp(f, d, density, c, b, m, cb),
            lambda density, c, b: (_imp_rounds(density, b.prune_rate) + 1) * c.epochs,
            "iterative magnitude pruning with rewinding",
        ),
        Baseline(
            "cs",
            lambda f, d, density, c, m, b, cb: run_cs(f, d, density, c, b, m, cb),
            lambda density, c, b: b.cs_rounds * b.cs_epochs + c.epochs,
            "Continuous Sparsification",
        ),
        Baseline(
            "magnitude",
            lambda f, d, density, c, m, b, cb: run_magnitude(f, d, density, c, m, cb),
            lambda density, c, b: 2 * c.epochs,
            "one-shot global magnitude pruning",
        ),
        Baseline(
            "random",
            lambda f, d, density, c, m, b, cb: run_random(f, d, density, c, m, cb),
            lambda density, c, b: c.epochs,
            "a uniformly random mask",
        ),
    )
}


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
    if method in BASELINES:
        b = BASELINES[method]
        return b.run(factory, data, density, config, ticket.mask, baseline or BaselineConfig(),
                     on_epoch)  # fmt: skip
    lookup({n: n for n in method_names()}, method, "method")
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
    if method in BASELINES:
        return BASELINES[method].epochs(density, config, baseline or BaselineConfig())
    return (ticket or TicketConfig()).search_epochs + config.epochs
