"""How well do validation and the cross-validated accuracy predict a candidate's test accuracy?

For every trial that a kept study (``run.py --keep DIR``) cross-validated (``hwsparse.crossval``),
prints its validation accuracy (n = val split), its pooled cross-validated accuracy (n = train +
val) and its ticket's test accuracy (evaluated here once, fp32), then per dataset: the mean
absolute gap of each judge to test and how often each judge ranks a pair of candidates of the
same study as test does.

    python benchmarks/search/judges.py DIR [DIR ...]
"""

from __future__ import annotations

import itertools
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import optuna

from hwsparse import artifact_store, crossval
from hwsparse import storage as stores
from hwsparse.data import load_dataset

sys.path.insert(0, str(Path(__file__).parent))
from run import test_of  # noqa: E402


def main() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    by_data: dict[str, list[list[tuple[float, float, float]]]] = {}
    for folder in sys.argv[1:]:
        for journal in sorted(Path(folder).glob("*.journal")):
            storage = stores.open_storage(journal)
            study = optuna.load_study(study_name="bench", storage=storage.backend)
            storage = replace(storage, artifacts=artifact_store.of_study(study, storage))
            cv = study.user_attrs.get(crossval.CV_ATTR)
            if not cv:
                continue
            dataset = study.user_attrs["hwsparse_config"]["dataset"]
            data = load_dataset(dataset)
            rows = []
            for t in study.trials:
                judged = crossval.judged(cv, t.number)
                if judged is None:
                    continue
                test = test_of(study, t, storage, data)
                rows.append((t.user_attrs["val_accuracy"], judged.accuracy, test))
                print(f"{journal.stem} trial {t.number}: val {100 * rows[-1][0]:.2f} "
                      f"cv {100 * judged.accuracy:.2f} test {100 * test:.2f}")  # fmt: skip
            by_data.setdefault(dataset, []).append(rows)
    for dataset, studies in by_data.items():
        flat = [r for rows in studies for r in rows]
        gap_val = statistics.fmean(abs(v - t) for v, _, t in flat)
        gap_cv = statistics.fmean(abs(c - t) for _, c, t in flat)
        pairs = [
            p for rows in studies for p in itertools.combinations(rows, 2) if p[0][2] != p[1][2]
        ]
        agree_val = sum((a[0] - b[0]) * (a[2] - b[2]) > 0 for a, b in pairs)
        agree_cv = sum((a[1] - b[1]) * (a[2] - b[2]) > 0 for a, b in pairs)
        print(f"{dataset}: {len(flat)} candidates in {len(studies)} studies; mean |judge - test| "
              f"val {100 * gap_val:.2f} points, cv {100 * gap_cv:.2f}; pairs ordered as test: "
              f"val {agree_val}/{len(pairs)}, cv {agree_cv}/{len(pairs)}")  # fmt: skip


if __name__ == "__main__":
    main()
