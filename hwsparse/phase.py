"""Training phases: the loop over the training split, and the joint weights+masks search phase.

Plain PyTorch, no Optuna. :class:`Trainer` holds what the phases of one method run share (data
on the device, the precision, counters, the ``on_epoch`` callback) and runs one phase with
:meth:`Trainer.fit`. :func:`search_phase` is the paper's joint phase as a public function:
relaxed masks trained with the weights on ``loss + lambda * sum R(m)``; solo training
(:func:`hwsparse.train.run_ticket`), Continuous Sparsification and the benchmarks call it.

No host sync inside a step: the penalty strength lambda and the ``--strength auto`` controller
live in device tensors; the loss, the penalty value and the density are read once per epoch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from hwsparse import accel as A
from hwsparse import masks as M
from hwsparse.data import Dataset
from hwsparse.deploy.compact import Silenced, silence
from hwsparse.penalties import get_penalty, resolve_eps

if TYPE_CHECKING:
    from hwsparse.train import TicketConfig, TrainConfig


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""


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


OnEpoch = Callable[[EpochInfo], None]


# --- the search phase's settings and per-step mask work -----------------------------------------


@dataclass(frozen=True)
class SearchPhase:
    """Settings of one joint weights+masks phase (built from a TicketConfig by :meth:`of`)."""

    epochs: int  # epochs of the phase
    mask_lr: float  # Adam learning rate of the mask scores
    penalty: str  # see hwsparse.penalties.PENALTIES
    eps: float  # the penalty's concavity scale (resolved, never None)
    strength: float  # lambda (auto: its start value); 0 = no penalty term
    target: float | None  # density the auto controller aims at (None: lambda stays fixed)
    threshold: float  # soft-mask threshold of the reported density
    ramp: float  # auto: share of the phase over which the density path reaches the target
    rate: float  # auto: log-lambda change per step at relative density error 1
    mask: M.MaskConfig  # parameterisation, temperature and its anneal

    @classmethod
    def of(cls, ticket: TicketConfig) -> SearchPhase:
        return cls(
            epochs=ticket.search_epochs,
            mask_lr=ticket.mask_lr,
            penalty=ticket.penalty,
            eps=resolve_eps(ticket.penalty, ticket.eps),
            strength=ticket.strength,
            target=ticket.density if ticket.auto_strength else None,
            threshold=ticket.threshold,
            ramp=ticket.auto_ramp,
            rate=ticket.auto_rate,
            mask=ticket.mask,
        )


class PenaltyTerm:
    """``lambda * sum R(m)`` over all mask entries (channel entries weighted by their size).

    With a ``target``, lambda is a Lagrange multiplier for "density <= target" and follows dual
    ascent in log space after every step: it grows while the soft-mask density is above the
    density path and shrinks when below, so the phase ends near the asked density whatever the
    dataset (our *choice*, ``--strength auto``; a fixed lambda is the paper's). lambda is a
    0-d tensor on the masks' device, so neither the gradient nor the controller syncs.
    """

    DOWN = 10.0  # 10x faster when below: concave pulls collapse entries with momentum
    HEADROOM = 1.1  # aim a little above the target: top-k then trims to it exactly

    def __init__(self, relaxed: dict[str, M.RelaxedMask], spec: SearchPhase) -> None:
        self.relaxed = relaxed
        self.fn = get_penalty(spec.penalty)
        self.eps = spec.eps
        device = next(iter(relaxed.values())).score.device
        self.lam = torch.tensor(spec.strength, dtype=torch.float32, device=device)
        self.threshold = spec.threshold
        self.target = None if spec.target is None else spec.target * self.HEADROOM
        self.ramp, self.rate = spec.ramp, spec.rate
        self._total = sum(m.score.numel() * m.entry_size for m in relaxed.values())

    @torch.no_grad()
    def value(self) -> float:
        """lambda * sum R(m) at the current masks (reporting; one host sync)."""
        terms = [self.fn(m.soft(), self.eps).sum() * m.entry_size for m in self.relaxed.values()]
        return float(self.lam * torch.stack(terms).sum())

    @torch.no_grad()
    def add_grad(self) -> None:
        """Add d(lambda * sum R(m)) / d(score) to the mask gradients, in closed form.

        Same gradient as back-propagating the penalty, at a fraction of the cost (it runs on
        every step): lambda * entry_size * R'(m), times dm/ds = m (1 - m) / T for sigmoid masks.
        Called between backward and the optimiser step, so a sigmoid mask's m is the one its
        forward pass computed (``RelaxedMask.recent_soft``), not computed again.
        """
        for m in self.relaxed.values():
            soft = m.recent_soft()
            if m.score.grad is None:
                m.score.grad = torch.zeros_like(m.score)
            scale = self.lam if m.entry_size == 1 else self.lam * m.entry_size
            if m.param == "projected":
                self.fn.add_slope_(m.score.grad, soft, self.eps, scale)
            else:  # dm/ds = m (1 - m) / T: sigmoid's own backward kernel
                slope = torch.ops.aten.sigmoid_backward(self.fn.slope(soft, self.eps), soft)
                m.score.grad.addcmul_(slope, scale / m.temperature)

    @torch.no_grad()
    def soft_density(self) -> torch.Tensor:
        """Share of masked weights whose relaxed mask is above the threshold (0-d tensor)."""
        kept = [m.kept(self.threshold) * m.entry_size for m in self.relaxed.values()]
        return torch.stack(kept).sum() / self._total

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        """Dual ascent towards a density path that falls geometrically from 1 to the target
        over the first ``ramp`` of the phase and then holds it (device tensors only)."""
        if self.target is None:
            return
        goal = self.target ** min(1.0, progress / self.ramp)
        error = (self.soft_density() - goal) / goal
        rate = torch.where(error > 0, self.rate, self.rate * self.DOWN)
        self.lam.mul_(torch.exp(rate * error.clamp(-1.0, 1.0)))


def temperature_schedule(cfg: M.MaskConfig) -> Callable[[float], float] | None:
    """Sigmoid masks: T(progress in [0, 1]) falls geometrically from T_0 to T_0 / anneal."""
    if cfg.param != "sigmoid":
        return None
    t0, ratio = cfg.temperature, cfg.anneal
    return lambda progress: t0 * ratio ** (-progress)


class MaskStep:
    """The per-step mask work of a search phase: temperature, penalty gradient, projection,
    the strength controller."""

    def __init__(
        self,
        relaxed: dict[str, M.RelaxedMask],
        penalty: PenaltyTerm | None,
        temperature: Callable[[float], float] | None,
        lr: float,
    ) -> None:
        self.relaxed, self.penalty, self.temperature, self.lr = relaxed, penalty, temperature, lr

    def params(self) -> list[torch.Tensor]:
        return [m.score for m in self.relaxed.values()]

    def before(self, progress: float) -> None:
        if self.temperature is not None:
            M.set_temperature(self.relaxed, self.temperature(progress))

    def grad(self) -> None:
        if self.penalty is not None:
            self.penalty.add_grad()

    def after(self, progress: float) -> None:
        M.project(self.relaxed)
        if self.penalty is not None:
            self.penalty.after_step(progress)

    def value(self) -> float:
        return self.penalty.value() if self.penalty is not None else 0.0


# --- the loop ------------------------------------------------------------------------------------


class Trainer:
    """State shared by the phases of one method run: data on device, precision, counters,
    the ``on_epoch`` callback, and the silencing of a ticket's dead channels."""

    def __init__(self, data: Dataset, config: TrainConfig, on_epoch: OnEpoch | None) -> None:
        self.config = config
        self.device = A.resolve_device(config.device)
        self.precision = A.select_precision(config.precision, self.device)
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

    def accuracy(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
        return A.evaluate(model, x, y)

    def fit(
        self,
        model: nn.Module,
        epochs: int,
        phase: str,
        *,
        masks: MaskStep | None = None,
        snapshot_step: int | None = None,
        density: Callable[[], float] | None = None,
    ) -> dict[str, torch.Tensor] | None:
        """Train ``model`` for ``epochs``; returns the weight snapshot at ``snapshot_step``.

        ``masks`` makes it a search phase (its mask scores train too); ``density()`` is the
        density reported per epoch (default 1).
        """
        cfg = self.config
        mask_params = masks.params() if masks is not None else []
        mask_ids = {id(p) for p in mask_params}
        weights = [p for p in model.parameters() if p.requires_grad and id(p) not in mask_ids]
        groups: list[dict[str, Any]] = [{"params": weights, "weight_decay": cfg.weight_decay}]
        if masks is not None:
            groups.append({"params": mask_params, "lr": masks.lr, "weight_decay": 0.0})
        # fused Adam: one kernel for all tensors (masks double the parameter count)
        optimizer = torch.optim.Adam(groups, lr=cfg.lr, fused=True)
        scaler = self.precision.grad_scaler(self.device)
        n = len(self.x_train)
        steps_per_epoch = math.ceil(n / cfg.batch_size)
        last = max(epochs * steps_per_epoch - 1, 1)
        snapshot = weight_state(model) if snapshot_step == 0 else None
        step = 0
        model.train()
        for epoch in range(1, epochs + 1):
            t0 = time.perf_counter()
            order = torch.randperm(n, generator=self.generator).to(self.device)
            loss_sum = torch.zeros((), device=self.device)
            for i in range(0, n, cfg.batch_size):
                if masks is not None:
                    masks.before(step / last)
                idx = order[i : i + cfg.batch_size]
                with self.precision.autocast(self.device):
                    loss = F.cross_entropy(model(self.x_train[idx]), self.y_train[idx])
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
                scaler.unscale_(optimizer)  # the penalty's gradient is added unscaled
                if masks is not None:
                    masks.grad()
                scaler.step(optimizer)
                scaler.update()
                if masks is not None:
                    masks.after(step / last)
                loss_sum += loss.detach().float() * len(idx)
                step += 1
                if snapshot_step is not None and step == snapshot_step:
                    snapshot = weight_state(model)
            mean_loss = float(loss_sum) / n + (masks.value() if masks is not None else 0.0)
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


# --- the public search phase ---------------------------------------------------------------------


@dataclass
class SearchOutcome:
    """What a search phase leaves: the rewind snapshot and lambda at its end."""

    snapshot: dict[str, torch.Tensor] | None  # weights at snapshot_step (None if not asked)
    strength_final: float | None  # lambda when the phase ended (None: no penalty term)


def search_phase(
    trainer: Trainer,
    model: nn.Module,
    relaxed: dict[str, M.RelaxedMask],
    spec: SearchPhase,
    *,
    name: str = "search",
    snapshot_step: int | None = None,
) -> SearchOutcome:
    """Train ``model``'s weights and its ``relaxed`` masks jointly for ``spec.epochs``.

    Loss: cross-entropy + lambda * sum R(m) (the penalty's gradient added in closed form);
    projected masks are clamped to [0, 1] after every step, sigmoid masks anneal their
    temperature per step; with ``spec.target`` lambda adapts towards that density.
    """
    term = PenaltyTerm(relaxed, spec) if spec.strength > 0 else None
    work = MaskStep(relaxed, term, temperature_schedule(spec.mask), spec.mask_lr)
    snapshot = trainer.fit(
        model,
        spec.epochs,
        name,
        masks=work,
        snapshot_step=snapshot_step,
        density=lambda: M.soft_density(relaxed, spec.threshold),
    )
    return SearchOutcome(snapshot, None if term is None else float(term.lam))
