"""Population-batched training: K candidates of one network, trained together, one step for all.

Plain PyTorch, no Optuna. Each member is one ticket run (:func:`hwsparse.train.run_ticket`):
search phase, binarisation (and the caller's ``select``, e.g. the budget cut), rewind, ticket.
The members' parameters are stacked along a leading population axis and one step runs the
network for all of them with ``torch.func.vmap`` over ``functional_call`` (chosen over
hand-written grouped matmul/conv kernels by benchmarks/throughput/impl.py: as fast or faster,
and it runs any model, batch norm included).

Members may differ in every searched knob: penalty type and eps, strength or target density,
mask learning rate, parameterisation (projected or sigmoid) and temperature, granularity,
which layers are masked, learning rate, weight decay, epochs, rewind step and seed. Per-member
quantities are tensors along the population axis; a member trains only its own slice (its
gradients, its Adam moments and step count, its data order from its own seed), so each
member's result equals a solo run with the same seed and settings, within floating-point
tolerance (tests/test_population.py checks every penalty and both parameterisations).

A member leaves when it finishes, diverges, or its ``on_epoch`` raises (a pruned trial);
a new candidate may join any free slot between epochs. All members share the batch size, the
device and the precision (fp32 or bf16: fp16's loss scaler skips steps for all at once, so an
fp16 run trains one candidate at a time).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

from hwsparse import accel as A
from hwsparse import masks as M
from hwsparse import train as T
from hwsparse.data import Dataset
from hwsparse.deploy.compact import silenced_parameters
from hwsparse.penalties import get_penalty
from hwsparse.phase import (
    Diverged,
    EpochInfo,
    OnEpoch,
    PenaltyTerm,
    SearchPhase,
    Trainer,
    temperature_schedule,
    weight_state,
)

Select = Callable[[nn.Module, M.Masks], M.Masks]
MAX_SLOTS = 64  # the most candidates one population trains at once
# --batch-trials auto on a CPU: one trial at a time. Measured on the 2-core development VM
# (benchmarks/throughput/results_epoch.md), a population's search epoch was no faster than its
# members one after another (LeNet-5 on MNIST-10k 1.00x) or slower (LeNet-300-100 0.45-0.60x).
CPU_SLOTS = 1
_BETAS, _ADAM_EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults, as the solo run uses


@dataclass
class Candidate:
    """One ticket run: the arguments of a solo :func:`hwsparse.train.run_ticket`."""

    ticket: T.TicketConfig
    train: T.TrainConfig
    on_epoch: OnEpoch | None = None
    select: Select | None = None
    tag: Any = None  # the caller's handle (e.g. the Optuna trial)


@dataclass(frozen=True)
class _Plan:
    """Host-side facts of one step: occupied slots and the mask kinds searching members use."""

    live: tuple[int, ...]  # occupied slots
    search: bool  # some member is in its search phase
    sig: bool  # ... with sigmoid masks
    proj: bool  # ... with projected masks
    weight: bool  # ... with weight-granularity masks
    chan: bool  # ... with channel masks
    whole: dict[str, bool]  # layer -> every slot searching with that layer masked


@dataclass
class Left:
    """A member that left the population: its result, or the exception its on_epoch raised."""

    candidate: Candidate
    result: T.RunResult | None
    error: Exception | None = None


class _Member:
    """Host-side state of one member: its phase, counters and bookkeeping Trainer."""

    def __init__(self, cand: Candidate, run: Trainer, steps_per_epoch: int) -> None:
        self.cand, self.run, self.spe = cand, run, steps_per_epoch
        self.spec = SearchPhase.of(cand.ticket)
        self.penalty = get_penalty(cand.ticket.penalty)
        self.schedule = temperature_schedule(cand.ticket.mask)
        self.phase = "search"
        self.epochs = self.spec.epochs
        self.epoch = 0  # epochs done in this phase
        self.step = 0  # optimiser steps done in this phase
        self.temperature = cand.ticket.mask.temperature
        self.snapshot: dict[str, Tensor] | None = None
        self.masks: M.Masks = {}
        self.message = ""
        self.kept = 1.0
        self.strength_final: float | None = None
        self.layers: set[str] = set()  # the layers its relaxed masks sit on

    def progress(self) -> float:
        return self.step / max(self.epochs * self.spe - 1, 1)


def _v(vec: Tensor, like: Tensor) -> Tensor:
    """A per-member vector (K,) viewed to broadcast against ``like`` (K, ...)."""
    return vec.view(-1, *([1] * (like.dim() - 1)))


class Population:
    """Up to ``slots`` ticket runs of ``factory``'s network trained as one batched model."""

    def __init__(
        self,
        factory: T.ModelFactory,
        data: Dataset,
        *,
        slots: int,
        batch_size: int,
        device: str = "auto",
        precision: str = "auto",
        deterministic: bool = False,
        forward: str = "auto",
    ) -> None:
        """``forward``: ``vmap`` (one batched call for all members), ``loop`` (each member its
        own kernels), or ``auto``: vmap on a GPU, loop on a CPU (see :meth:`_forward`)."""
        if not 1 <= slots <= MAX_SLOTS:
            raise ValueError(f"slots must be in 1..{MAX_SLOTS} (got {slots})")
        self.factory, self.data, self.K, self.batch_size = factory, data, slots, batch_size
        self.device = A.resolve_device(device)
        self.device_name, self.deterministic = device, deterministic
        self.precision = A.select_precision(precision, self.device)
        self.precision_name = precision
        if forward not in ("auto", "vmap", "loop"):
            raise ValueError(f"forward must be auto, vmap or loop (got {forward!r})")
        self.vmap = forward == "vmap" or (forward == "auto" and self.device.type == "cuda")
        if self.precision.scaler:
            raise ValueError("fp16 trains one candidate at a time (its loss scaler is global)")
        d, k = self.device, slots
        self.x_train, self.y_train = data.x_train.to(d), data.y_train.to(d)
        self.x_val, self.y_val = data.x_val.to(d), data.y_val.to(d)
        self.base = factory().to(d)
        self.layers = [n for n, m in self.base.named_modules() if isinstance(m, M.PRUNABLE_TYPES)]
        self.w = {
            n: torch.zeros((k, *p.shape), device=d, requires_grad=True)
            for n, p in self.base.named_parameters()
        }
        self.buf = {n: torch.zeros((k, *b.shape), dtype=b.dtype, device=d)
                    for n, b in self.base.named_buffers()}  # fmt: skip
        weights = {n: self.w[n + ".weight"] for n in self.layers}
        self.sw = {n: torch.ones_like(w, requires_grad=True) for n, w in weights.items()}
        self.sc = {
            n: torch.ones((k, w.shape[1]) + (1,) * (w.dim() - 2), device=d, requires_grad=True)
            for n, w in weights.items()
        }
        self.bin = {n: torch.ones_like(w) for n, w in weights.items()}
        self.masked = {n: torch.zeros(k, dtype=torch.bool, device=d) for n in self.layers}
        self.row = {n: w[0, 0].numel() for n, w in weights.items()}  # weights per channel
        self.keep: dict[str, Tensor] = {}  # silenced parameters: 0 where a gradient is dropped

        def vec(value: float = 0.0) -> Tensor:
            return torch.full((k,), value, device=d)

        self.sig, self.chan = vec().bool(), vec().bool()
        self.search, self.auto = vec().bool(), vec().bool()
        self.temp, self.scale, self.lam = vec(1.0), vec(1.0), vec()
        self.threshold, self.total, self.rate = vec(0.5), vec(1.0), vec()
        # Adam per member: learning rates, weight decay, step counts (weights; mask scores)
        self.lr_w, self.wd, self.lr_m = vec(), vec(), vec()
        self.step_w, self.step_m = vec(), vec()
        self.m1 = {id(t): torch.zeros_like(t) for t in self._trainable()}
        self.m2 = {id(t): torch.zeros_like(t) for t in self._trainable()}
        self.members: list[_Member | None] = [None] * k
        self.spe = math.ceil(len(self.x_train) / batch_size)

    # --- membership ------------------------------------------------------------------------------

    def free(self) -> int:
        return sum(m is None for m in self.members)

    def active(self) -> int:
        return self.K - self.free()

    def fits(self, cand: Candidate) -> bool:
        """Whether ``cand`` can train in this population (same batch, device, precision)."""
        t = cand.train
        return (t.batch_size, t.device, t.precision, t.deterministic) == (
            self.batch_size, self.device_name, self.precision_name, self.deterministic
        )  # fmt: skip

    def _trainable(self) -> list[Tensor]:
        return [*self.w.values(), *self.sw.values(), *self.sc.values()]

    @torch.no_grad()
    def join(self, cand: Candidate) -> None:
        """Put ``cand`` in a free slot: built as the solo run builds it (same seed, same init)."""
        if not self.fits(cand):
            raise ValueError("candidate does not fit this population (batch/device/precision)")
        k = self.members.index(None)
        torch.manual_seed(cand.train.seed)
        model = self.factory().to(self.device)
        relaxed = M.attach_relaxed(model, cand.ticket.mask)
        mem = _Member(cand, Trainer(self.data, cand.train, cand.on_epoch), self.spe)
        mem.layers = set(relaxed)
        self._load(k, weight_state(model))
        cfg = cand.ticket.mask
        init = 1.0 if cfg.param == "projected" else cfg.sigmoid_init * cfg.temperature
        for n in self.layers:
            self.sw[n][k] = init
            self.sc[n][k] = init
            self.bin[n][k] = 1.0
            self.masked[n][k] = n in relaxed
        for t in self.keep.values():
            t[k] = 1.0
        first = next(iter(relaxed.values()))
        self.sig[k], self.chan[k] = cfg.param == "sigmoid", cfg.granularity == "channel"
        self.search[k], self.auto[k] = True, mem.spec.target is not None and mem.spec.strength > 0
        self.temp[k], self.scale[k], self.lam[k] = cfg.temperature, first.scale, mem.spec.strength
        self.threshold[k] = mem.spec.threshold
        self.total[k] = float(sum(r.score.numel() * r.entry_size for r in relaxed.values()))
        self.rate[k] = mem.spec.rate
        self.lr_w[k], self.wd[k], self.lr_m[k] = (
            cand.train.lr,
            cand.train.weight_decay,
            mem.spec.mask_lr,
        )
        self._reset_adam(k)
        if cand.train.rewind_steps == 0:
            mem.snapshot = weight_state(model)
        self.members[k] = mem

    @torch.no_grad()
    def _load(self, k: int, state: dict[str, Tensor]) -> None:
        for n, t in self.w.items():
            t[k] = state[n]
        for n, t in self.buf.items():
            t[k] = state[n]

    @torch.no_grad()
    def _reset_adam(self, k: int) -> None:
        for t in self._trainable():
            self.m1[id(t)][k] = 0.0
            self.m2[id(t)][k] = 0.0
        self.step_w[k], self.step_m[k] = 0.0, 0.0

    @torch.no_grad()
    def _leave(self, k: int) -> None:
        """Free slot ``k``: zero its tensors (a diverged member's NaNs must not linger)."""
        for t in [*self.w.values(), *self.buf.values()]:
            t[k] = 0
        self.search[k], self.lam[k] = False, 0.0
        self.auto[k] = False
        self.lr_w[k], self.lr_m[k] = 0.0, 0.0
        self._reset_adam(k)
        self.members[k] = None

    # --- the batched network ---------------------------------------------------------------------

    def _plan(self) -> _Plan:
        """Which mask kinds the members use now (host-side), so a step computes only those."""
        live = tuple(k for k, m in enumerate(self.members) if m is not None)
        search = [m for m in self.members if m is not None and m.phase == "search"]
        kinds = {(m.cand.ticket.mask.param, m.cand.ticket.mask.granularity) for m in search}
        every = len(search) == self.K
        return _Plan(
            live=live,
            search=bool(search),
            sig=any(p == "sigmoid" for p, _ in kinds),
            proj=any(p == "projected" for p, _ in kinds),
            weight=any(g == "weight" for _, g in kinds),
            chan=any(g == "channel" for _, g in kinds),
            whole={n: every and all(n in m.layers for m in search) for n in self.layers},
        )

    def _soft(self, s: Tensor, plan: _Plan) -> Tensor:
        """Relaxed mask values of stacked scores: sigmoid(s / T) or s, per member."""
        if not plan.sig:
            return s
        sig = torch.sigmoid(s / _v(self.temp, s))
        return torch.where(_v(self.sig, s), sig, s) if plan.proj else sig

    def _branches(self, n: str, plan: _Plan) -> list[tuple[Tensor, bool]]:
        """The score tensors of layer ``n`` in use: (weight-shaped, False), (channel, True)."""
        out = [(self.sw[n], False)] if plan.weight else []
        return out + [(self.sc[n], True)] if plan.chan else out

    def _effective(self, plan: _Plan) -> dict[str, Tensor]:
        """Each member's weights as its forward pass sees them (mask applied)."""
        out = dict(self.w)
        for n in self.layers:
            w = self.w[n + ".weight"]
            if not plan.search:
                out[n + ".weight"] = w * self.bin[n]
                continue
            soft = {channel: self._soft(s, plan) for s, channel in self._branches(n, plan)}
            if len(soft) == 2:
                m = torch.where(_v(self.chan, w), soft[True], soft[False])
            else:
                m = next(iter(soft.values()))
            if plan.sig:
                m = m * _v(self.scale, w)
            if not plan.whole[n]:
                m = torch.where(_v(self.search & self.masked[n], w), m, self.bin[n])
            out[n + ".weight"] = w * m
        return out

    def _forward(self, params: dict[str, Tensor], x: Tensor, live: tuple[int, ...]) -> Tensor:
        """Logits (len(live), batch, classes) of the ``live`` members; ``x`` is (K, batch, ...)
        per member, or (batch, ...) shared by all.

        On a GPU one vmapped call runs every member (batched matmul, grouped conv: few
        launches); on a CPU each member runs its own native kernels on its slice (vmap's
        batched kernels were slower there, benchmarks/throughput/impl.md), and only the mask
        work and the optimiser are batched.
        """
        shared = x.dim() == self.x_train.dim()
        if self.vmap:

            def one(p: dict[str, Tensor], b: dict[str, Tensor], xx: Tensor) -> Tensor:
                out: Tensor = functional_call(self.base, (p, b), (xx,))
                return out

            logits = vmap(one, in_dims=(0, 0, None if shared else 0))(params, self.buf, x)
            return logits[list(live)] if len(live) < self.K else logits
        p = {n: t.unbind(0) for n, t in params.items()}
        b = {n: t.unbind(0) for n, t in self.buf.items()}
        outs = [
            functional_call(
                self.base,
                ({n: v[k] for n, v in p.items()}, {n: v[k] for n, v in b.items()}),
                (x if shared else x[k],),
            )
            for k in live
        ]
        return torch.stack(outs)

    # --- one epoch -------------------------------------------------------------------------------

    def run_epoch(self) -> list[Left]:
        """Train every member for one epoch of its current phase; returns those that left."""
        with A.deterministic(self.deterministic):
            return self._epoch()

    def _epoch(self) -> list[Left]:
        t0 = time.perf_counter()
        n, d = len(self.x_train), self.device
        members = self.members
        if not self.active():
            return []
        orders = torch.stack([
            torch.randperm(n, generator=m.run.generator) if m else torch.arange(n)
            for m in members
        ]).to(d)  # fmt: skip
        loss_sum = torch.zeros(self.K, device=d)
        for i in range(0, n, self.batch_size):
            idx = orders[:, i : i + self.batch_size]
            loss_sum += self._step(idx) * idx.shape[1]
        with torch.no_grad():
            plan = self._plan()
            val = self._val_accuracy(plan)
            density = self._density(plan)
        seconds = time.perf_counter() - t0
        left: list[Left] = []
        for k, mem in enumerate(members):
            if mem is None:
                continue
            out = self._end_epoch(k, mem, float(loss_sum[k]) / n, float(val[k]),
                                  float(density[k]), seconds)  # fmt: skip
            if out is not None:
                self._leave(k)
                left.append(out)
        return left

    def _step(self, idx: Tensor) -> Tensor:
        """One optimiser step of every member; returns the members' losses (K,)."""
        members = list(self.members)
        for k, m in enumerate(members):
            if m is not None and m.phase == "search" and m.schedule is not None:
                m.temperature = m.schedule(m.progress())
                self.temp[k] = m.temperature
        plan = self._plan()
        for t in self._trainable():
            t.grad = None
        live = list(plan.live)
        x, y = self.x_train[idx], self.y_train[idx[live]]
        with self.precision.autocast(self.device):
            logits = self._forward(self._effective(plan), x, plan.live)
            per_sample = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
            losses = per_sample.view(len(live), -1).mean(1)
        losses.sum().backward()  # type: ignore[no-untyped-call]
        with torch.no_grad():
            for name, keep in self.keep.items():
                grad = self.w[name].grad
                assert grad is not None
                grad.mul_(keep)
            self._penalty_grads(plan)
            self._adam(plan)
            self._project(plan)
            self._control(plan)
        for k, m in enumerate(members):
            if m is None:
                continue
            m.step += 1
            if m.phase == "search" and m.step == m.cand.train.rewind_steps:
                m.snapshot = {n: t[k].detach().clone() for n, t in self._state().items()}
        out = torch.zeros(self.K, device=self.device)
        out[live] = losses.detach().float()
        return out

    def _state(self) -> dict[str, Tensor]:
        return {**self.w, **self.buf}

    def _penalty_grads(self, plan: _Plan) -> None:
        """lambda * entry_size * R'(m) (times dm/ds for sigmoid masks), per penalty group."""
        groups: dict[str, list[tuple[int, float]]] = {}
        for k, m in enumerate(self.members):
            if m is not None and m.phase == "search" and m.spec.strength > 0:
                groups.setdefault(m.cand.ticket.penalty, []).append((k, m.spec.eps))
        for name, members in groups.items():
            fn = get_penalty(name).slope
            idx = torch.tensor([k for k, _ in members], device=self.device)
            eps = torch.tensor([e for _, e in members], device=self.device)
            for n in self.layers:
                for scores, channel in self._branches(n, plan):
                    s = scores[idx]
                    temp, sig = _v(self.temp[idx], s), _v(self.sig[idx], s)
                    soft = torch.where(sig, torch.sigmoid(s / temp), s)
                    size = self.row[n] if channel else 1
                    # every slope R'(m, eps) broadcasts a per-member eps tensor
                    g = fn(soft, _v(eps, s)).mul_(_v(self.lam[idx], s) * size)  # type: ignore[arg-type]
                    g = torch.where(sig, g * (soft * (1 - soft) / temp), g)
                    on = self.masked[n][idx] & (self.chan[idx] == channel)
                    assert scores.grad is not None
                    scores.grad.index_add_(0, idx, g * _v(on, g))

    def _adam(self, plan: _Plan) -> None:
        """The solo run's optimiser (torch.optim.Adam's update, L2 weight decay) on the
        stacked tensors, all members at once: per-member learning rate, weight decay and step
        count are vectors along the population axis, so a step costs the same few kernels per
        tensor whatever the number of members (a launch-bound GPU's cost). A member's masks
        train only in its search phase, and only the scores of its granularity on the layers
        it masks; every other slice gets a zero step (its moments are never read again: they
        are reset when the member changes phase or a new one joins). Equal to the solo run's
        fused kernel within floating-point rounding (tests/test_population.py)."""
        on_w = torch.zeros(self.K, dtype=torch.bool, device=self.device)
        on_w[list(plan.live)] = True
        self.step_w += on_w
        weights = [(t, on_w) for t in self.w.values()]
        self._adam_group(weights, self.step_w, self.lr_w, self.wd)
        if not plan.search:
            return
        self.step_m += self.search
        scores = [
            (s, self.search & self.masked[n] & (self.chan == channel))
            for n in self.layers
            for s, channel in self._branches(n, plan)
        ]
        self._adam_group(scores, self.step_m, self.lr_m, None)

    def _adam_group(
        self, tensors: list[tuple[Tensor, Tensor]], step: Tensor, lr: Tensor, wd: Tensor | None
    ) -> None:
        """One Adam step of stacked ``tensors``, each with the members it updates (``on``)."""
        b1, b2 = _BETAS
        # bias corrections in float64, as torch's Adam computes them, once for the group;
        # members not stepping keep their count and get a step size of 0
        safe = step.double().clamp_min(1)
        size = (lr.double() / (1 - b1**safe)).float()
        bc2_sqrt = (1 - b2**safe).sqrt().float()
        for t, on in tensors:
            grad = t.grad
            if grad is None:
                continue
            if wd is not None:
                grad = torch.addcmul(grad, t, _v(wd, t))  # L2: grad + wd * w, one pass
            m1, m2 = self.m1[id(t)], self.m2[id(t)]
            m1.lerp_(grad, 1 - b1)
            m2.mul_(b2).addcmul_(grad, grad, value=1 - b2)
            denom = (m2.sqrt() / _v(bc2_sqrt, t)).add_(_ADAM_EPS)
            t.addcdiv_(m1 * -_v(torch.where(on, size, 0.0), t), denom)

    def _project(self, plan: _Plan) -> None:
        """Clamp projected masks of searching members to [0, 1]."""
        if not plan.proj:
            return
        on = self.search & ~self.sig
        for n in self.layers:
            for s, _ in self._branches(n, plan):
                s.copy_(torch.where(_v(on, s), s.clamp(0.0, 1.0), s))

    def _density(self, plan: _Plan) -> Tensor:
        """Per member: share of masked weights whose relaxed mask is above its threshold."""
        kept = torch.zeros(self.K, device=self.device)
        for n in self.layers:
            for scores, channel in self._branches(n, plan):
                above = self._soft(scores, plan) > _v(self.threshold, scores)
                count = above.flatten(1).sum(1) * (self.row[n] if channel else 1)
                kept += count * (self.masked[n] & (self.chan == channel))
        return kept / self.total

    def _control(self, plan: _Plan) -> None:
        """--strength auto: the dual ascent of PenaltyTerm.after_step, per member (the goals
        come from host-side progress, so nothing is read back from the device)."""
        goals = [1.0] * self.K
        for k, m in enumerate(self.members):
            if m is not None and m.phase == "search" and m.spec.target is not None:
                target = m.spec.target * PenaltyTerm.HEADROOM
                goals[k] = target ** min(1.0, m.progress() / m.spec.ramp)
        if goals == [1.0] * self.K and not any(
            m is not None and m.phase == "search" and m.spec.target is not None
            for m in self.members
        ):
            return
        goal = torch.tensor(goals, device=self.device)
        error = (self._density(plan) - goal) / goal
        rate = torch.where(error > 0, self.rate, self.rate * PenaltyTerm.DOWN)
        factor = torch.exp(rate * error.clamp(-1.0, 1.0))
        self.lam.mul_(torch.where(self.auto & self.search, factor, 1.0))

    @torch.no_grad()
    def _val_accuracy(self, plan: _Plan) -> Tensor:
        """Per member: top-1 accuracy on the val split, fp32, in EVAL_BATCH chunks."""
        self.base.eval()
        params = self._effective(plan)
        correct = torch.zeros(self.K, device=self.device)
        for i in range(0, len(self.x_val), A.EVAL_BATCH):
            logits = self._forward(params, self.x_val[i : i + A.EVAL_BATCH], plan.live)
            hits = (logits.argmax(-1) == self.y_val[i : i + A.EVAL_BATCH]).sum(1)
            correct[list(plan.live)] += hits.float()
        self.base.train()
        return correct / max(len(self.x_val), 1)

    # --- the end of an epoch: reports, phase changes, results ---------------------------------

    def _end_epoch(
        self, k: int, mem: _Member, loss: float, val: float, density: float, seconds: float
    ) -> Left | None:
        """What the solo loop does after an epoch, for member ``k``; a Left when it leaves."""
        run, method = mem.run, mem.cand.ticket.penalty
        search = mem.phase == "search"
        if search and mem.spec.strength > 0:
            loss += self._penalty_value(k, mem)
        mem.epoch += 1
        run.epochs += 1
        run.steps += self.spe
        try:
            if not math.isfinite(loss):
                raise Diverged(f"training loss became {loss} in {mem.phase} epoch {mem.epoch}")
            info = EpochInfo(
                phase=mem.phase,
                epoch=mem.epoch,
                epochs=mem.epochs,
                loss=loss,
                val_accuracy=val,
                density=density if search else mem.kept,
                seconds=seconds,
            )
            run.history.append(info)
            if run.on_epoch is not None:
                run.on_epoch(info)
            if mem.epoch < mem.epochs:
                return None
            if search:
                return self._to_ticket(k, mem)
            return Left(mem.cand, self._ticket_result(k, mem))
        except Diverged as exc:
            return Left(mem.cand, T.diverged_result(run, method, exc))
        except Exception as exc:  # the caller's on_epoch or select: a pruned trial, bad input
            return Left(mem.cand, None, exc)

    @torch.no_grad()
    def _penalty_value(self, k: int, mem: _Member) -> float:
        """lambda * sum R(m) of member ``k`` (PenaltyTerm.value; once per epoch)."""
        terms = []
        for n in self.layers:
            if bool(self.masked[n][k]):
                channel = bool(self.chan[k])
                scores = (self.sc if channel else self.sw)[n][k]
                soft = torch.sigmoid(scores / mem.temperature) if bool(self.sig[k]) else scores
                size = self.row[n] if channel else 1
                terms.append(mem.penalty(soft, mem.spec.eps).sum() * size)
        return float(self.lam[k] * torch.stack(terms).sum())

    def _model(self, k: int) -> nn.Module:
        """A plain model holding member ``k``'s weights and buffers (no masks)."""
        model = self.factory().to(self.device)
        model.load_state_dict({n: t[k].detach().clone() for n, t in self._state().items()})
        return model

    def _to_ticket(self, k: int, mem: _Member) -> Left | None:
        """Search phase done: binarise (and select) as the solo run does, rewind, silence."""
        mem.strength_final = float(self.lam[k]) if mem.spec.strength > 0 else None
        model = self._model(k)
        relaxed = M.attach_relaxed(model, mem.cand.ticket.mask)
        with torch.no_grad():
            for n, r in relaxed.items():
                r.score.copy_((self.sc if bool(self.chan[k]) else self.sw)[n][k])
        M.set_temperature(relaxed, mem.temperature)
        if mem.snapshot is None:  # rewind past the end of the search phase: its last weights
            mem.snapshot = weight_state(model)
        masks, message, skipped = T.choose_masks(mem.run, model, mem.cand.ticket, mem.cand.select)
        if skipped is not None:
            skipped.strength_final = mem.strength_final
            return Left(mem.cand, skipped)
        plain = self.factory().to(self.device)
        plain.load_state_dict(mem.snapshot)
        mem.run.silence(plain, masks)
        assert mem.run.silenced is not None
        dead = silenced_parameters(plain, mem.run.silenced.dead)
        mem.run.unsilence()
        with torch.no_grad():
            self._load(k, weight_state(plain))
            for n in self.layers:
                self.bin[n][k] = masks[n] if n in masks else 1.0
            for name, d in dead.items():
                if name not in self.keep:
                    self.keep[name] = torch.ones_like(self.w[name])
                self.keep[name][k] = (~d).float()
            for t in self.keep.values():
                if not any(t is self.keep[name] for name in dead):
                    t[k] = 1.0
        self.search[k], self.auto[k] = False, False
        self._reset_adam(k)
        mem.masks, mem.message = masks, message
        mem.phase, mem.epoch, mem.step, mem.epochs = "ticket", 0, 0, mem.cand.train.epochs
        mem.kept = M.global_density(plain, masks)
        return None

    def _ticket_result(self, k: int, mem: _Member) -> T.RunResult:
        """The trained ticket as the solo run returns it: masks baked, evaluated val and test."""
        model = self._model(k)
        with torch.no_grad():
            modules = dict(model.named_modules())
            for n, mask in mem.masks.items():
                weight = modules[n].weight
                assert isinstance(weight, Tensor)
                weight.mul_(mask.to(weight.device))
        result = T.result_of(mem.run, mem.cand.ticket.penalty, model, mem.masks, mem.message)
        result.strength_final = mem.strength_final
        return result


def run_population(
    factory: T.ModelFactory,
    data: Dataset,
    candidates: list[Candidate],
    slots: int,
    forward: str = "auto",
) -> list[T.RunResult | Exception]:
    """Train ``candidates`` (all with the same batch size, device and precision) ``slots`` at
    a time, new ones joining as others leave; returns each one's result (or the exception its
    ``on_epoch``/``select`` raised), in the order given."""
    if not candidates:
        return []
    first = candidates[0].train
    pop = Population(
        factory,
        data,
        slots=min(slots, len(candidates)),
        batch_size=first.batch_size,
        device=first.device,
        precision=first.precision,
        deterministic=first.deterministic,
        forward=forward,
    )
    waiting = list(range(len(candidates)))
    out: dict[int, T.RunResult | Exception] = {}
    for i, c in enumerate(candidates):
        c.tag = (i, c.tag)
    try:
        while waiting or pop.active():
            while waiting and pop.free():
                pop.join(candidates[waiting.pop(0)])
            for gone in pop.run_epoch():
                i, tag = gone.candidate.tag
                out[i] = gone.result if gone.result is not None else gone.error  # type: ignore[assignment]
    finally:
        for c in candidates:
            c.tag = c.tag[1]
    return [out[i] for i in range(len(candidates))]


def auto_slots(
    model: nn.Module,
    input_shape: tuple[int, ...],
    device: torch.device,
    batch_size: int = 64,
    free_bytes: int | None = None,
) -> int:
    """``--batch-trials auto``: on a CPU ``CPU_SLOTS`` (1, as measured); on a GPU as many
    members as fit in 70 % of its free memory (``free_bytes``, default
    torch.cuda.mem_get_info), at most ``MAX_SLOTS``.

    A member needs, per parameter, 4 bytes for each of: the weight, its two mask-score
    tensors, their three gradients and six Adam moments, the masked weight and its gradient
    (14 x 4 bytes); and per sample of the batch the network's activations, kept for the
    backward pass and matched by their gradients (2 x 4 bytes per activation value).
    """
    if device.type != "cuda":
        return CPU_SLOTS
    if free_bytes is None:
        free_bytes = int(torch.cuda.mem_get_info(device)[0])
    params = sum(p.numel() for p in model.parameters())
    sizes: list[int] = []
    hooks = [
        m.register_forward_hook(lambda mod, i, o: sizes.append(o.numel() // 2))
        for m in model.modules()
        if not list(m.children())
    ]
    try:
        with torch.no_grad():
            model.cpu().eval()(torch.zeros(2, *input_shape))
    finally:
        for h in hooks:
            h.remove()
    per_member = 14 * 4 * params + 2 * 4 * sum(sizes) * batch_size
    return max(1, min(MAX_SLOTS, int(0.7 * free_bytes) // per_member))
