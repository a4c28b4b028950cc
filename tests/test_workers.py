"""``hwsparse search --workers N`` / ``--gpus``: who gets which device and how many threads
(checked on the CPU: the GPU path has not run on a GPU), and a real two-worker study."""

from __future__ import annotations

import json
import os
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from typer.testing import CliRunner

from hwsparse import storage as stores
from hwsparse import workers
from hwsparse.cli import app
from hwsparse.errors import InputError

runner = CliRunner()


def test_visible_gpus_follow_cuda_visible_devices() -> None:
    assert workers.visible_gpus({}, 3) == ["0", "1", "2"]
    assert workers.visible_gpus({"CUDA_VISIBLE_DEVICES": "4,6"}, 2) == ["4", "6"]
    uuids = "GPU-aa11,GPU-bb22"
    assert workers.visible_gpus({"CUDA_VISIBLE_DEVICES": uuids}, 2) == ["GPU-aa11", "GPU-bb22"]
    assert workers.visible_gpus({"CUDA_VISIBLE_DEVICES": ""}, 0) == []


def test_gpus_are_indices_of_the_visible_ones() -> None:
    visible = ["4", "6", "7"]
    assert workers.choose_gpus(None, visible) == visible
    assert workers.choose_gpus("2,0", visible) == ["7", "4"]
    for bad in ("3", "x", "0,0", "-1"):
        with pytest.raises(InputError, match="--gpus"):
            workers.choose_gpus(bad, visible)
    with pytest.raises(InputError, match="valid: none"):
        workers.choose_gpus("0", [])


def test_one_gpu_per_worker_and_threads_split() -> None:
    plans = workers.plan(4, ["4", "6"], threads=16)
    env = [dict(p.env) for p in plans]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in env] == ["4", "6", "4", "6"]  # round robin
    assert [e[workers.INDEX_ENV] for e in env] == ["0", "1", "2", "3"]
    assert all(p.device == "cuda" and p.threads == 4 for p in plans)
    cpu = workers.plan(3, [], threads=2)
    assert all(p.device == "cpu" and p.threads == 1 for p in cpu)  # never below one thread
    assert all("CUDA_VISIBLE_DEVICES" not in dict(p.env) for p in cpu)
    with pytest.raises(InputError, match="--workers"):
        workers.plan(0, [], threads=2)


def test_gpus_on_the_cpu_is_one_line() -> None:
    r = runner.invoke(app, ["search", "--device", "cpu", "--gpus", "0"])
    assert r.exit_code == 2 and "--gpus needs" in r.stderr


def test_two_workers_run_one_study_and_the_parent_picks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["search", "--workers", "2", "--trials", "4", "--epochs", "1", "--device", "cpu",
            "--target", "raspberry-pi-4", "--latency-ms", "10", "--json"]  # fmt: skip
    r = runner.invoke(app, args)
    assert r.exit_code == 0, (r.stderr, r.exception)
    out = json.loads(r.stdout)
    # two workers that finish at the same instant may both start one more: at most N-1 extra
    assert 4 <= out["total"] <= 5 and out["ran"] == out["total"] and out["picked"] is not None
    study = stores.load_study("default", stores.open_storage())
    done = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(done) == out["total"]
    pids = {int(str(t.user_attrs["worker"]).rpartition(":")[2]) for t in done}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2  # run by the worker processes
    assert len({json.dumps(t.params, sort_keys=True) for t in done}) == len(done)
    assert study.user_attrs.get("hwsparse_pick", {}).get("trial") == out["picked"]["trial"]


def test_runs_go_to_hwsparse_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(stores.HOME_ENV, str(tmp_path / "home"))
    assert stores.default_storage() == tmp_path / "home" / "hwsparse.journal"
    r = runner.invoke(app, ["search", "--trials", "1", "--epochs", "1", "--target",
                            "raspberry-pi-4", "--latency-ms", "10"])  # fmt: skip
    assert r.exit_code == 0, (r.stderr, r.exception)
    assert (tmp_path / "home" / "hwsparse.journal").is_file()
    assert (tmp_path / "home" / "hwsparse.artifacts").is_dir()
    r = runner.invoke(app, ["plot", "default"])
    assert r.exit_code == 0, (r.stderr, r.exception)
    assert (tmp_path / "home" / "default.png").is_file()  # plot's default is the same folder
    assert not (tmp_path / "runs").exists()
    assert optuna.study.get_all_study_names(stores.open_storage().backend) == ["default"]
