"""Storage failures on a real filesystem: torn and damaged journals, read-only folders, a full
disk, Ctrl-C. Each is one line on stderr (exit 2, or 130 for Ctrl-C) and never corrupts a study.

Read-only folders and full disks are real mounts (tmpfs, read-only bind mounts): root ignores
permission bits, so chmod would prove nothing. Tests that need a mount skip when mounting is
not permitted (no CAP_SYS_ADMIN).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState
from typer.testing import CliRunner

from hwsparse import _journal, search
from hwsparse import storage as stores
from hwsparse.cli import app
from hwsparse.cost.estimate import Budget
from hwsparse.errors import InputError
from hwsparse.space import load_space

runner = CliRunner()
FAST = ["--target", "raspberry-pi-4", "--latency-ms", "10", "--model", "mlp", "--epochs", "1",
        "--device", "cpu"]  # fmt: skip


def _search(tmp: Path, journal: Path, trials: int = 2) -> None:
    space = search.apply_epochs(load_space("default"), 1)
    config = search.SearchConfig(
        target="raspberry-pi-4", budget=Budget(latency_ms=10.0), space=space.as_dict()
    )
    storage = stores.open_storage(journal, create=True)
    search.run_search("s", storage, config, space, trials=trials, device="cpu")


@pytest.fixture(scope="module")
def study_journal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real small study (2 trials, 1 epoch) in a journal, with its artifacts."""
    tmp = tmp_path_factory.mktemp("study")
    journal = tmp / "s.journal"
    _search(tmp, journal)
    return journal


def _copy(journal: Path, to: Path, data: bytes | None = None) -> Path:
    to.mkdir(parents=True, exist_ok=True)
    target = to / journal.name
    target.write_bytes(journal.read_bytes() if data is None else data)
    artifacts = journal.with_suffix(".artifacts")
    if artifacts.is_dir() and not target.with_suffix(".artifacts").exists():
        shutil.copytree(artifacts, target.with_suffix(".artifacts"))
    return target


def _state(storage: stores.Storage) -> Any:
    """Everything a user sees of a storage: studies, their attrs and trials."""
    rows = []
    for name in sorted(optuna.study.get_all_study_names(storage=storage.backend)):
        study = optuna.load_study(study_name=name, storage=storage.backend)
        trials = [
            (t.number, t.state, t.params, t.user_attrs, t.values)
            for t in study.get_trials(deepcopy=False)
        ]
        rows.append((name, study.user_attrs, trials))
    return rows


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


# --- torn and damaged journals -------------------------------------------------------------------


def test_torn_tail_at_every_byte_is_ignored_by_readers_and_dropped_by_writers(
    study_journal: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = study_journal.read_bytes()
    lines = data.splitlines(keepends=True)
    assert len(lines) > 4
    tail_start = len(data) - sum(len(line) for line in lines[-3:])  # the last 3 records
    boundaries = {sum(len(line) for line in lines[:i]) for i in range(len(lines) + 1)}
    expected: dict[int, Any] = {}
    path = tmp_path / "t.journal"
    for cut in range(tail_start, len(data) + 1):
        whole = max(b for b in boundaries if b <= cut)  # what was complete before the tear
        if whole not in expected:
            path.write_bytes(data[:whole])
            expected[whole] = _state(stores.open_storage(path))
        path.write_bytes(data[:cut])
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="hwsparse"):
            assert _state(stores.open_storage(path)) == expected[whole], cut  # reader
        assert path.read_bytes() == data[:cut], f"a reader changed the file (cut {cut})"
        warned = [r.getMessage() for r in caplog.records if r.name == "hwsparse"]
        if cut == whole:
            assert not warned, cut
            continue
        assert len(warned) == 1 and f"{cut - whole} bytes at byte {whole}" in warned[0]
        assert "ignored it" in warned[0] and str(path) in warned[0]
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="hwsparse"):
            assert _state(stores.open_storage(path, create=True)) == expected[whole]  # writer
        assert path.read_bytes() == data[:whole], f"torn tail not dropped (cut {cut})"
        (warned,) = [r.getMessage() for r in caplog.records if r.name == "hwsparse"]
        assert "dropped it" in warned and f"{cut - whole} bytes" in warned


def test_damage_before_the_last_record_is_an_error_that_changes_nothing(
    study_journal: Path, tmp_path: Path
) -> None:
    # A torn record that a later write was glued onto, at every byte of 3 records that are not
    # the last: what an unrepaired journal became (issue: "after appending to the partial line").
    data = study_journal.read_bytes()
    lines = data.splitlines(keepends=True)
    last2 = b"".join(lines[-2:])
    start = sum(len(line) for line in lines[:-5])
    path = tmp_path / "d.journal"
    for cut in range(start, len(data) - len(last2)):
        line_start = data.rfind(b"\n", 0, cut) + 1
        damaged = data[:cut] + last2
        path.write_bytes(damaged)
        for create in (False, True):
            if cut == line_start:  # cut between records: nothing is damaged
                stores.open_storage(path, create=create)
                continue
            with pytest.raises(InputError, match=f"damaged at byte {line_start} ") as exc:
                stores.open_storage(path, create=create)
            assert "\n" not in str(exc.value)
            assert path.read_bytes() == damaged, f"damaged file modified (cut {cut})"


def test_cli_on_torn_and_damaged_journals(study_journal: Path, tmp_path: Path) -> None:
    data = study_journal.read_bytes()
    torn = _copy(study_journal, tmp_path / "torn", data[:-40])
    for args in (["studies"], ["show", "s"]):
        r = runner.invoke(app, [*args, "--storage", str(torn)])
        assert r.exit_code == 0, r.stderr
        assert "warning:" in r.stderr and "torn record" in r.stderr and "ignored" in r.stderr
        assert torn.read_bytes() == data[:-40]
    r = runner.invoke(app, ["search", "--study", "fresh", "--storage", str(torn), *FAST,
                            "--trials", "1", "--json"])  # fmt: skip
    assert r.exit_code == 0, r.stderr
    assert "dropped it" in r.stderr
    assert _journal.scan(torn).torn == 0
    names = optuna.study.get_all_study_names(stores.open_storage(torn).backend)
    assert sorted(names) == ["fresh", "s"]
    lines = data.splitlines(keepends=True)
    glued = lines[-4][:10] + lines[-3] + lines[-2] + lines[-1]
    bad = _copy(study_journal, tmp_path / "bad", b"".join(lines[:-4]) + glued)
    before = bad.read_bytes()
    offset = len(b"".join(lines[:-4]))
    for args in (["studies"], ["show", "s"], ["search", "--study", "s", *FAST, "--trials", "3"]):
        r = runner.invoke(app, [*args, "--storage", str(bad)])
        assert r.exit_code == 2, (args, r.stderr)
        line = _one_line(r.stderr)
        assert f"damaged at byte {offset} " in line and str(bad) in line
        assert bad.read_bytes() == before


# --- mounts --------------------------------------------------------------------------------------


def _mount(*args: str) -> None:
    res = subprocess.run(["mount", *args], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount here ({res.stderr.strip() or res.returncode}): needs root")


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


@pytest.fixture
def read_only(tmp_path: Path, study_journal: Path) -> Iterator[Path]:
    """A read-only folder (bind mount) holding a copy of the study."""
    folder = tmp_path / "ro"
    _copy(study_journal, folder)
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    _mount("--bind", str(folder), str(folder))
    try:
        _mount("-o", "remount,bind,ro", str(folder))
        probe = folder / ".probe"
        with pytest.raises(OSError):
            probe.write_text("x")
        yield folder
    finally:
        _umount(folder)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 512 KiB tmpfs (room for one trial's ticket, not two)."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    _mount("-t", "tmpfs", "-o", "size=512k", "tmpfs", str(folder))
    try:
        yield folder
    finally:
        _umount(folder)


def test_search_with_storage_in_a_read_only_folder(read_only: Path) -> None:
    journal = read_only / "s.journal"
    before = journal.read_bytes()
    for storage, what in ((read_only / "new.journal", "take its lock"),
                          (journal, "take its lock")):  # fmt: skip
        r = runner.invoke(app, ["search", "--storage", str(storage), *FAST, "--trials", "1"])
        assert r.exit_code == 2, r.stderr
        line = _one_line(r.stderr)
        assert f"cannot write storage {storage}" in line and what in line, line
        assert "file system" in line
    assert journal.read_bytes() == before
    r = runner.invoke(app, ["studies", "--storage", str(journal), "--json"])  # reads work
    assert r.exit_code == 0 and [s["study"] for s in json.loads(r.stdout)["studies"]] == ["s"]


def test_outputs_into_a_read_only_folder(read_only: Path, study_journal: Path) -> None:
    storage = ["--storage", str(study_journal)]
    cases = [
        (["plot", "s", *storage, "--out", str(read_only / "p.png")], read_only / "p.png"),
        (["export", "s", *storage, "--out", str(read_only / "exp")], read_only / "exp"),
        (
            [
                "ticket",
                "--epochs",
                "1",
                "--search-epochs",
                "1",
                "--density",
                "0.2",
                "--device",
                "cpu",
                "--out",
                str(read_only / "t"),
            ],
            read_only / "t",
        ),  # fmt: skip
    ]
    for args, path in cases:
        r = runner.invoke(app, args)
        assert r.exit_code == 2, (args, r.stdout, r.stderr)
        line = _one_line(r.stderr)
        assert line.startswith("error: cannot write ") and str(path) in line, line
        assert "Read-only file system" in line


def test_full_disk_during_a_study_keeps_the_study_readable(small_disk: Path) -> None:
    journal = small_disk / "f.journal"
    args = ["search", "--study", "f", "--storage", str(journal), *FAST]
    r = runner.invoke(app, [*args, "--trials", "4"])
    assert r.exit_code == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert errors == lines[-1:] and "Traceback" not in r.stderr, r.stderr
    assert "cannot write" in errors[0] and "No space left on device" in errors[0]
    assert str(small_disk) in errors[0]
    assert _journal.scan(journal).torn == 0  # no partial record left behind
    before = stores.open_storage(journal)
    done = {t.number for t in stores.load_study("f", before).trials if t.state.is_finished()}
    _mount("-o", "remount,size=16m", str(small_disk))  # space again
    r = runner.invoke(app, [*args, "--more", "1", "--json"])
    assert r.exit_code == 0, r.stderr
    study = stores.load_study("f", stores.open_storage(journal))
    complete = {t.number for t in study.get_trials(states=(TrialState.COMPLETE,))}
    assert complete and {n for n in done if n in complete} <= complete
    assert not study.get_trials(states=(TrialState.RUNNING,))


def test_journal_append_on_a_full_disk_leaves_no_partial_record(small_disk: Path) -> None:
    journal = small_disk / "a.journal"
    storage = stores.open_storage(journal, create=True)
    study = optuna.create_study(study_name="a", storage=storage.backend)
    filler = small_disk / "filler"
    try:  # fill the disk up
        with open(filler, "wb", buffering=0) as f:
            while True:
                f.write(b"\0" * 4096)
    except OSError:
        pass
    before = journal.read_bytes()
    with pytest.raises(OSError) as exc:
        for _ in range(1000):  # until the journal's last page is full too
            study.set_user_attr("x" * 64, "y" * 4096)
    assert exc.value.filename == str(journal)
    assert journal.read_bytes().startswith(before)
    assert _journal.scan(journal).torn == 0
    filler.unlink()
    again = stores.open_storage(journal, create=True)
    assert optuna.study.get_all_study_names(again.backend) == ["a"]


# --- Ctrl-C --------------------------------------------------------------------------------------


def _running_trial(journal: Path) -> bool:
    if not journal.exists():
        return False
    try:
        storage = stores.open_storage(journal)
        if "i" not in optuna.study.get_all_study_names(storage.backend):
            return False
        study = optuna.load_study(study_name="i", storage=storage.backend)
    except InputError:  # read while a record was being written
        return False
    return any(t.state == TrialState.RUNNING and "worker" in t.user_attrs for t in study.trials)


def test_ctrl_c_in_search_is_one_line_and_resumable(tmp_path: Path) -> None:
    journal = tmp_path / "i.journal"
    args = ["search", "--study", "i", "--storage", str(journal), "--target", "raspberry-pi-4",
            "--latency-ms", "10", "--model", "mlp", "--epochs", "20", "--trials", "3",
            "--device", "cpu"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "2"}  # 20 + 20 epochs: seconds a trial, even idle
    proc = subprocess.Popen(
        [sys.executable, "-m", "hwsparse", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not _running_trial(journal):
        time.sleep(0.2)
    time.sleep(0.3)  # into the trial's training
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    (said,) = [line for line in lines if "interrupted" in line]
    assert said == lines[-1]
    assert said.startswith("interrupted: study i: ") and "trial(s) complete" in said
    assert "was cut off and runs again first" in said
    assert said.endswith("resume with: python -m hwsparse " + " ".join(args))
    assert _journal.scan(journal).torn == 0
    study = stores.load_study("i", stores.open_storage(journal))
    (cut,) = [t for t in study.trials if t.user_attrs.get("interrupted")]
    assert f"trial {cut.number} was cut off" in said
    r = runner.invoke(app, [*args, "--json"])
    assert r.exit_code == 0, r.stderr
    assert cut.number in json.loads(r.stdout)["retried"]


def test_ctrl_c_in_other_commands_is_one_line() -> None:
    from hwsparse.cli import _common

    with pytest.raises(Exception) as exc, _common.user_errors():
        raise KeyboardInterrupt
    assert getattr(exc.value, "exit_code", None) == 130


# --- where runs go -------------------------------------------------------------------------------


def test_runs_go_under_the_working_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert stores.default_storage() == tmp_path / "runs" / "hwsparse.journal"
    assert stores.DEFAULT_STORAGE == tmp_path / "runs" / "hwsparse.journal"
    r = runner.invoke(app, ["studies"])
    assert r.exit_code == 2 and str(tmp_path / "runs" / "hwsparse.journal") in r.stderr
