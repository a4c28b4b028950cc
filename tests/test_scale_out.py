"""Several machines on one study: a real PostgreSQL server and a real S3-compatible server.

``HWSPARSE_TEST_PG_URL`` names a PostgreSQL server (``.ci/run`` starts a throwaway one with
``.ci/postgres`` and always sets it); each test gets a fresh database on it. Only the PostgreSQL
tests are skipped without it. Machines are simulated by working folders, each with its own
``runs/``: they share only the storage URL and the artifact location. S3 is moto's server mode
(the S3 protocol over HTTP on loopback), started by the test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState
from typer.testing import CliRunner

from hwsparse import artifact_store, recovery, search
from hwsparse import storage as stores
from hwsparse.cli import app

runner = CliRunner()
SMALL = ["--target", "raspberry-pi-4", "--latency-ms", "10", "--epochs", "1", "--threads", "1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _worker(folder: Path, url: str, shared: Path, trials: int) -> subprocess.Popen[str]:
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "hwsparse",
        "search",
        "--study",
        "s",
        "--storage",
        url,
        "--artifacts",
        str(shared),
        "--trials",
        str(trials),
        "--heartbeat",
        "1",
        *SMALL,
        "--epochs",
        "2",
    ]  # fmt: skip  (the last --epochs counts)
    return subprocess.Popen(
        cmd, cwd=folder, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def _running_trial_of(url: str, pid: int) -> int | None:
    """The number of a trial that worker ``pid`` is running and has sent a heartbeat for (a
    trial frozen before its first heartbeat would never go stale)."""
    storage = stores.open_storage(url)
    if "s" not in optuna.study.get_all_study_names(storage.backend):
        return None
    backend = storage.backend
    assert isinstance(backend, optuna.storages.RDBStorage)
    for t in stores.load_study("s", storage).get_trials(states=(TrialState.RUNNING,)):
        if str(t.user_attrs.get("worker", "")).endswith(f":{pid}"):
            with backend.engine.connect() as db:
                beats = db.execute(
                    sqlalchemy.text("SELECT count(*) FROM trial_heartbeats WHERE trial_id = :i"),
                    {"i": t._trial_id},
                ).scalar()
            return t.number if beats else None
    return None


def test_three_workers_on_postgres_one_killed_lose_nothing(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "shared-artifacts"  # the one folder every "machine" mounts
    machines = [tmp_path / "m1", tmp_path / "m2", tmp_path / "m1"]
    # all three start at once on a fresh database: schema and study are created by one of them
    procs = [_worker(m, pg_url, shared, trials=16) for m in machines]
    victim = procs[1]  # the worker in m2
    killed = None
    deadline = time.monotonic() + 60
    while killed is None and time.monotonic() < deadline and victim.poll() is None:
        # any of its trials will do: a survivor that would finish the study only with the dead
        # trial waits for its heartbeat to go stale and runs it again (search.others_finish)
        if _running_trial_of(pg_url, victim.pid) is not None:
            victim.send_signal(signal.SIGSTOP)  # frozen: that trial cannot finish now
            killed = _running_trial_of(pg_url, victim.pid)
            if killed is None:  # it finished in between: let it go on
                victim.send_signal(signal.SIGCONT)
        time.sleep(0.02)
    assert killed is not None, "the victim never started a trial"
    victim.send_signal(signal.SIGKILL)  # mid-trial
    victim.communicate()
    for p in (procs[0], procs[2]):
        _, errors = p.communicate(timeout=110)
        assert p.returncode == 0, errors[-2000:]

    storage = stores.open_storage(pg_url)
    study = stores.load_study("s", storage)
    if study.get_trials(states=(TrialState.RUNNING,)):
        # the survivors reached 16 without the dead trial: both saw 15 finished or running
        # at once and each started one more. The next run on the study recovers it, once its
        # heartbeat is stale (three beats), and runs it again.
        assert [t.number for t in study.get_trials(states=(TrialState.RUNNING,))] == [killed]
        assert search.count_finished(study) >= 16
        time.sleep(3.5)
        again = _worker(tmp_path / "m1", pg_url, shared, search.count_finished(study) + 1)
        _, errors = again.communicate(timeout=110)
        assert again.returncode == 0, errors[-2000:]
    trials = study.get_trials()
    by_number = {t.number: t for t in trials}
    assert by_number[killed].state == TrialState.FAIL
    reruns = [t for t in trials if recovery.retry_source(t) == killed]
    assert len(reruns) == 1 and reruns[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
    # the same knobs (a trial killed while its knobs were being sampled has only the first)
    assert by_number[killed].params.items() <= reruns[0].params.items()
    # nothing duplicated: every re-run is of a failed trial, and each one is re-run once
    sources = [recovery.retry_source(t) for t in trials if recovery.retry_source(t) is not None]
    assert len(sources) == len(set(sources))
    assert all(by_number[n].state == TrialState.FAIL for n in sources)
    assert search.count_finished(study) >= 16
    assert not any(t.state == TrialState.RUNNING for t in trials)
    # nothing finished is lost: every completed trial's ticket is in the shared store
    assert study.user_attrs[artifact_store.ATTR] == str(shared)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert complete
    for t in complete:
        artifact_store.fetch_ticket(study, t, storage, tmp_path / "fetched" / str(t.number))
    assert not (tmp_path / "m1" / "runs" / "artifacts").exists()
    assert not (tmp_path / "m2" / "runs").exists()  # a server storage writes nothing locally
    # the pick exports from a third folder, with no artifact flag
    third = tmp_path / "m3"
    third.mkdir()
    monkeypatch.chdir(third)
    r = runner.invoke(app, ["export", "s", "--storage", pg_url, "--out", "t"])
    assert r.exit_code == 0, (r.stderr, r.exception)
    assert (third / "t" / "card.json").is_file()


def _names(url: str) -> list[str]:
    return optuna.study.get_all_study_names(stores.open_storage(url).backend)


def _one_line_exit_2(args: list[str]) -> str:
    r = runner.invoke(app, args)
    assert r.exit_code == 2, (r.exit_code, r.stderr, r.exception)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


def test_bad_input_on_postgres_is_one_line_and_leaves_the_study(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    from sqlalchemy.engine import make_url

    url = make_url(pg_url)
    wrong = url.set(password="not-the-password").render_as_string(hide_password=False)
    line = _one_line_exit_2(["search", "--storage", wrong, "--artifacts", "a", *SMALL])
    assert "password" in line and "not-the-password" not in line
    closed = url.set(port=1).render_as_string(hide_password=False)  # nothing listens there
    line = _one_line_exit_2(["studies", "--storage", closed])
    assert "cannot open storage" in line and "hwsparse:***@" in line
    # a study on a server needs an artifact location every machine reaches
    assert "--artifacts" in _one_line_exit_2(["search", "--storage", pg_url, *SMALL])
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    line = _one_line_exit_2(
        ["search", "--storage", pg_url, "--artifacts", str(blocked / "sub"), *SMALL]
    )
    assert "cannot write artifacts" in line
    assert _names(pg_url) == []  # no study was made by any of these
    # a worker that joins with another target or space is refused; the study is untouched
    shared = str(tmp_path / "shared")
    ok = runner.invoke(
        app, ["search", "--study", "j", "--storage", pg_url, "--artifacts", shared,
              "--trials", "1", *SMALL],
    )  # fmt: skip
    assert ok.exit_code == 0, ok.stderr
    before = stores.load_study("j", stores.open_storage(pg_url))
    for change in (["--target", "stm32h7"], ["--space", "wide"]):
        args = ["search", "--study", "j", "--storage", pg_url, "--trials", "3", *SMALL, *change]
        assert "different" in _one_line_exit_2(args)
    other = str(tmp_path / "elsewhere")
    args = ["search", "--study", "j", "--storage", pg_url, "--artifacts", other, *SMALL]
    assert "keeps its tickets in" in _one_line_exit_2(args)
    after = stores.load_study("j", stores.open_storage(pg_url))
    assert len(after.trials) == len(before.trials) == 1
    assert after.user_attrs == before.user_attrs
    assert not Path(other).exists()


# --- S3 ------------------------------------------------------------------------------------------


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A local S3-compatible server (moto) with one bucket; boto3 finds it by environment."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for key, value in {"AWS_ENDPOINT_URL": f"http://{host}:{port}",
                       "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    import boto3

    boto3.client("s3").create_bucket(Bucket="tickets")
    yield "s3://tickets/studies/x"
    server.stop()


def test_tickets_in_s3_are_found_from_another_folder(
    s3: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    journal = str(tmp_path / "shared.journal")
    monkeypatch.chdir(one)
    r = runner.invoke(
        app, ["search", "--study", "s", "--storage", journal, "--artifacts", s3,
              "--trials", "2", *SMALL],
    )  # fmt: skip
    assert r.exit_code == 0, (r.stderr, r.exception)
    assert not (tmp_path / "shared.artifacts").exists()  # not beside the journal: in S3
    import boto3

    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="tickets")["Contents"]]
    assert keys and all(k.startswith("studies/x/") for k in keys)
    monkeypatch.chdir(two)
    r = runner.invoke(app, ["export", "s", "--storage", journal, "--out", "t"])
    assert r.exit_code == 0, (r.stderr, r.exception)
    assert (two / "t" / "card.json").is_file()
    # a bucket that does not exist cannot be written: one line, no study
    line = _one_line_exit_2(
        ["search", "--study", "n", "--storage", journal, "--artifacts", "s3://nope/x", *SMALL]
    )
    assert "cannot write artifacts to s3://nope/x" in line
    assert "n" not in optuna.study.get_all_study_names(stores.open_storage(journal).backend)
