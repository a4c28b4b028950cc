"""What the pick's cross-validation costs next to the study's training, on a finished study.

A study made with seed 0 (the default). Drops the study's stored cross-validation, runs the
pick again (``search.pick_and_test`` with ``search.fold_judge``) and prints its seconds next
to the trials' summed ``train_seconds``.
The pick's test record is kept; only the cross-validation attr is rewritten (same result:
folds and trainings are seeded).

    hwsparse search                      # the default study, in HWSPARSE_HOME or ./runs
    python benchmarks/search/cv_cost.py runs/hwsparse.journal default
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace

import optuna
import torch

from hwsparse import artifact_store, crossval, search
from hwsparse import storage as stores
from hwsparse.cost.estimate import Budget
from hwsparse.cost.profiles import load_profile
from hwsparse.data import load_dataset
from hwsparse.space import parse_space


def main() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(1)
    storage = stores.open_storage(sys.argv[1])
    study = optuna.load_study(study_name=sys.argv[2], storage=storage.backend)
    storage = replace(storage, artifacts=artifact_store.of_study(study, storage))
    made = study.user_attrs[search.CONFIG_ATTR]
    config = search.SearchConfig(dataset=made["dataset"], model=made["model"],
                                 target=made["target"], budget=Budget(**made["budget"]),
                                 space=made["space"], seed=0)  # fmt: skip
    space = parse_space(made["space"], "stored")
    data = load_dataset(config.dataset)
    dtype = load_profile(config.target).engine().dtype
    study.set_user_attr(crossval.CV_ATTR, None)
    judge = search.fold_judge(study, storage, config, space, dtype, "cpu")
    started = time.perf_counter()
    chosen, _ = search.pick_and_test(study, storage, data, dtype, judge, config.seed)
    seconds = time.perf_counter() - started
    trained = sum(t.user_attrs.get("train_seconds") or 0.0 for t in study.trials)
    judged = (
        crossval.judged(study.user_attrs.get(crossval.CV_ATTR), chosen.number) if chosen else None
    )
    print(f"cross-validation of the pick: {seconds:.1f} s; the {len(study.trials)} trials' "
          f"training: {trained:.1f} s (train_seconds summed); {judged}")  # fmt: skip


if __name__ == "__main__":
    main()
