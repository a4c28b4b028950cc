"""IMP once down to the smallest density, with a ticket at each asked density on the way.

``hwsparse.train.run_imp(density)`` runs the whole trajectory for one density. Runs for 5 %,
2 % and 1 % share every round above 5 %: only their last round differs (it lands exactly on
the asked density). An IMP user who wants all three runs the trajectory once and keeps a ticket
at each density; :func:`imp_tickets` does that. Each ticket is the one ``run_imp(density)``
returns (same rounds, same random stream: ``python benchmarks/tickets/run.py --verify-imp``
checks it) and its ``epochs`` count what ``run_imp(density)`` alone spends: the dense run, the
shared rounds above the density and its own last round. Rounds below a ticket's density, and
the other tickets' last rounds, are not charged to it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from hwsparse import masks as M
from hwsparse import train as T
from hwsparse.data import Dataset
from hwsparse.phase import Trainer


def imp_tickets(
    factory: T.ModelFactory,
    data: Dataset,
    densities: list[float],
    config: T.TrainConfig,
    baseline: T.BaselineConfig | None = None,
    mask_config: M.MaskConfig | None = None,
) -> Iterator[tuple[float, T.RunResult]]:
    """Yield ``(density, run_imp(density))`` for every density, largest first, from one path."""
    baseline = baseline or T.BaselineConfig()
    mask_config = mask_config or M.MaskConfig()
    rate = baseline.prune_rate
    final = {M.check_density(d): T._imp_rounds(d, rate) for d in densities}
    run = Trainer(data, config, None)
    model = T._build(factory, run)
    names = T._layer_names(model, mask_config)
    last = names[-1] if mask_config.mask_last else None
    snapshot = run.fit(model, config.epochs, "imp dense", snapshot_step=config.rewind_steps)
    assert snapshot is not None
    masks: M.Masks = {}
    current, branch_seconds = 1.0, 0.0
    for r in range(1, max(final.values()) + 1):
        scores = T._magnitudes(model, masks, names)
        for density in sorted((d for d, n in final.items() if n == r), reverse=True):
            t0 = time.perf_counter()
            fork = _fork(run, data, config, branch_seconds)
            branch = factory().to(run.device)
            kept = M.top_k_masks(model, scores, scores, max(density, current * (1 - rate)))
            T._rewind(branch, snapshot, kept, fork)
            fork.fit(branch, config.epochs, f"imp round {r}/{r}")
            yield density, T.result_of(fork, "imp", branch, kept)
            branch_seconds += time.perf_counter() - t0
        if r == max(final.values()):
            break
        # a round of the shared path: every remaining ticket's run_imp prunes the same way
        current *= 1 - rate
        if last is not None:
            scores = T._imp_output_layer(scores, masks, last, rate / 2)
        masks = M.top_k_masks(model, scores, scores, current)
        T._rewind(model, snapshot, masks, run)
        run.fit(model, config.epochs, f"imp round {r}")


def _fork(run: Trainer, data: Dataset, config: T.TrainConfig, elapsed: float) -> Trainer:
    """A trainer that continues ``run`` (its random stream and counters) without touching it;
    its clock leaves out ``elapsed`` seconds spent in earlier forks."""
    fork = Trainer(data, config, None)
    fork.generator.set_state(run.generator.get_state())
    fork.epochs, fork.steps = run.epochs, run.steps
    fork.started = run.started + elapsed
    return fork
