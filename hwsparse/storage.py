"""Optuna storages, artifact stores and crash recovery: where studies live and how a study
survives a killed worker.

One storage URL (or journal file) is the only coordination point: every worker process that
opens the same storage joins the same studies. Journal files get repaired or refused on open
(:mod:`hwsparse._journal`); their writes are cut back when they fail, so no torn record stays.

Crash safety. Finished trials are in the storage the moment they finish. A trial interrupted
by Ctrl-C is failed with ``interrupted`` set; a trial whose worker was killed stays RUNNING and
is recognised on the next run: on journal storages, each worker holds an ``flock`` on its own
lock file (``NAME.workers/<id>.lock``), which the OS releases when the process dies, whatever
its PID namespace; elsewhere, by process id on the same host and by heartbeat
(``STALE_AFTER_S``) across hosts. Either way its parameters are enqueued again once
(``retry_of``), so a resumed study re-runs it.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import re
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore, download_artifact
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock
from optuna.trial import FrozenTrial, TrialState

from hwsparse import _journal
from hwsparse.errors import InputError
from hwsparse.tickets import META_FILE, WEIGHTS_FILE

STALE_LOCK_S = 30  # Optuna's grace period: a journal lock this old is left by a dead writer
STALE_AFTER_S = 600.0  # a RUNNING trial of another host with no heartbeat this long is dead


# --- storage -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Storage:
    """An opened storage, the text it was given as, and where its artifacts live."""

    url: str
    backend: BaseStorage
    artifacts: Path


def runs_dir() -> Path:
    """Where runs go by default: ``./runs`` under the folder the user works in (now)."""
    return Path.cwd() / "runs"


def default_storage() -> Path:
    return runs_dir() / "hwsparse.journal"


def __getattr__(name: str) -> Path:  # RUNS_DIR / DEFAULT_STORAGE, evaluated when asked
    if name == "RUNS_DIR":
        return runs_dir()
    if name == "DEFAULT_STORAGE":
        return default_storage()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Journal(JournalFileBackend):
    """Optuna's journal file with safe appends (:func:`hwsparse._journal.append`): a write cut
    off by a full disk or Ctrl-C is removed again, a torn tail of a dead writer is dropped."""

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        lines = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs)
        with _locked(self._lock):
            _journal.append(Path(self._file_path), lines.encode("utf-8"))


@contextmanager
def _locked(lock: Any) -> Iterator[None]:  # Optuna's journal lock (acquire/release)
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _open_journal(path: Path, create: bool) -> JournalStorage:
    """Check (reader) or repair (writer, under the journal's lock) the file, then open it."""
    if create:
        lock = JournalFileSymlinkLock(str(path), grace_period=STALE_LOCK_S)
        what = "create its folder"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            what = f"take its lock {path}.lock"
            with _locked(lock):
                what = "open it for appending"
                open(path, "ab").close()
                what = "drop a torn last record"
                _journal.repair(path)
        except OSError as exc:
            raise InputError(
                f"cannot write storage {path} ({what}): {exc.strerror or exc}"
            ) from None
    else:
        try:
            _journal.check(path)
        except OSError as exc:
            raise InputError(f"cannot read storage {path}: {exc.strerror or exc}") from None
    try:
        return JournalStorage(_Journal(str(path)))
    except OSError as exc:
        raise InputError(f"cannot read storage {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # a journal whose records Optuna cannot replay
        raise InputError(f"cannot read storage {path}: {str(exc).splitlines()[0]}") from None


def open_storage(text: str | Path | None = None, *, create: bool = False) -> Storage:
    """Open an Optuna storage: a ``sqlite:///``/``postgresql+psycopg://``/``mysql+pymysql://``
    URL, or a path to a journal file (default ``runs/hwsparse.journal``; best for several
    processes on one machine).

    Artifacts (the tickets) go next to a file storage (``NAME.artifacts/``), else into
    ``runs/artifacts``.
    """
    raw = str(text) if text is not None else str(default_storage())
    if "://" in raw:
        if raw.startswith("sqlite:///"):
            db = Path(raw.removeprefix("sqlite:///"))
            if not create and not db.is_file():
                raise InputError(f"no storage at {raw}: the file {db} does not exist")
            artifacts = db.with_suffix(".artifacts")
        else:
            artifacts = runs_dir() / "artifacts"
        try:
            backend: BaseStorage = RDBStorage(
                raw, engine_kwargs={"connect_args": {"timeout": 30}} if "sqlite" in raw else {}
            )
        except Exception as exc:  # sqlalchemy raises many kinds for a bad URL or server
            raise InputError(f"cannot open storage {raw}: {str(exc).splitlines()[0]}") from None
        return Storage(raw, backend, artifacts)
    path = Path(raw).expanduser().resolve()
    if not create and not path.is_file():
        raise InputError(
            f"no storage at {path} (run `hwsparse search` first, or pass --storage "
            "PATH|sqlite:///FILE|postgresql+psycopg://...)"
        )
    return Storage(str(path), _open_journal(path, create), path.with_suffix(".artifacts"))


def load_study(name: str, storage: Storage) -> optuna.Study:
    names = optuna.study.get_all_study_names(storage=storage.backend)
    if name not in names:
        raise InputError(
            f"no study {name!r} in {storage.url}; studies there: {', '.join(names) or 'none'}"
        )
    return optuna.load_study(study_name=name, storage=storage.backend)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# --- worker locks (journal storages) -------------------------------------------------------------
#
# A PID says nothing across containers that share a hostname or across PID namespaces. So each
# worker of a journal storage holds an exclusive flock on its own file, NAME.workers/<id>.lock
# next to the journal, for as long as it lives, and records <id> on its trials
# (``worker_lock``). The OS drops a flock when its process dies, however it dies and whatever
# its PID namespace: a RUNNING trial is dead exactly when its worker's lock can be taken.

WORKER_LOCK_ATTR = "worker_lock"
_held_locks: dict[str, tuple[str, int]] = {}  # workers folder -> (lock id, open fd holding it)
_LOCK_ID = re.compile(r"[0-9a-f]{32}")


def workers_folder(journal: str | Path) -> Path:
    """Where the worker locks of the journal file ``journal`` live: ``NAME.workers/``."""
    return Path(journal).with_suffix(".workers")


def journal_path(study: optuna.Study) -> Path | None:
    backend = getattr(study._storage, "_backend", None)
    if isinstance(backend, JournalFileBackend):
        return Path(backend._file_path)
    return None


def worker_lock(journal: str | Path) -> str:
    """Take (once per process and journal) this worker's lock; returns its id. Held until the
    process exits (a clean exit also removes the file)."""
    folder = workers_folder(journal)
    held = _held_locks.get(str(folder))
    if held is not None:
        return held[0]
    folder.mkdir(parents=True, exist_ok=True)
    lock_id = uuid.uuid4().hex
    path = folder / f"{lock_id}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a fresh file: nobody else holds it
    _held_locks[str(folder)] = (lock_id, fd)
    atexit.register(_drop_lock, path, fd)
    return lock_id


def _drop_lock(path: Path, fd: int) -> None:
    path.unlink(missing_ok=True)
    os.close(fd)


def lock_is_free(journal: str | Path, lock_id: str) -> bool:
    """True when no live process holds worker ``lock_id``'s lock (its file is then removed);
    a missing lock file counts as free (its worker is gone, or another run recovered it)."""
    if not _LOCK_ID.fullmatch(lock_id):
        return True  # not an id this code wrote: no process can hold it
    path = workers_folder(journal) / f"{lock_id}.lock"
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return True
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        path.unlink(missing_ok=True)  # while holding it: its worker is dead
        return True
    finally:
        os.close(fd)


def recover_interrupted(study: optuna.Study) -> list[int]:
    """Fail trials whose worker is gone and enqueue every interrupted trial once again."""
    host = socket.gethostname()
    journal = journal_path(study)
    retried = {t.user_attrs.get("retry_of") for t in study.get_trials(deepcopy=False)}
    for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        retried.add(t.user_attrs.get("retry_of"))  # enqueued but not yet run
    again: list[int] = []
    for t in study.get_trials(deepcopy=False):
        dead = False
        if t.state == TrialState.RUNNING:
            worker = str(t.user_attrs.get("worker", ""))
            w_host, _, pid = worker.rpartition(":")
            # a trial that has not reached our objective yet has no heartbeat: use its start
            started = t.datetime_start.timestamp() if t.datetime_start else time.time()
            beat = float(t.user_attrs.get("heartbeat", started))
            lock_id = t.user_attrs.get(WORKER_LOCK_ATTR)
            if journal is not None and isinstance(lock_id, str):
                dead = lock_is_free(journal, lock_id)  # whatever host or PID it names
            elif w_host == host and pid.isdigit():  # a trial of a run before worker locks
                dead = not _alive(int(pid))
            else:
                dead = time.time() - beat > STALE_AFTER_S
            if dead:
                study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        interrupted = t.state == TrialState.FAIL and t.user_attrs.get("interrupted")
        if (dead or interrupted) and t.number not in retried and t.params:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
            again.append(t.number)
    return again


def interrupted_state(name: str, storage: Storage) -> tuple[int, list[int]] | None:
    """After Ctrl-C: (complete trials of study ``name``, numbers of this process's trials that
    were cut off and run again on resume); None when the study does not exist yet."""
    if name not in optuna.study.get_all_study_names(storage=storage.backend):
        return None
    study = optuna.load_study(study_name=name, storage=storage.backend)
    trials = study.get_trials(deepcopy=False)
    me = worker_id()
    cut = [
        t.number
        for t in trials
        if t.state == TrialState.FAIL
        and t.user_attrs.get("interrupted")
        and t.user_attrs.get("worker") == me
    ]
    return sum(t.state == TrialState.COMPLETE for t in trials), cut


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fetch_ticket(study: optuna.Study, trial: FrozenTrial, storage: Storage, folder: Path) -> Path:
    """Download a trial's ticket files into ``folder``."""
    store = FileSystemArtifactStore(str(study.user_attrs.get("artifacts", storage.artifacts)))
    folder.mkdir(parents=True, exist_ok=True)
    for name in (META_FILE, WEIGHTS_FILE):
        artifact = trial.user_attrs.get(f"artifact:{name}")
        if artifact is None:
            raise InputError(
                f"trial {trial.number} has no saved ticket (state {trial.state.name})"
            )
        target = folder / name
        target.unlink(missing_ok=True)
        try:
            download_artifact(artifact_store=store, file_path=str(target), artifact_id=artifact)
        except Exception as exc:  # missing artifact folder, moved storage
            raise InputError(
                f"ticket of trial {trial.number} not found in {store._base_path}: {exc}"
            ) from None
    return folder
