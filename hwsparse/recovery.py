"""Crash recovery: which RUNNING trials belong to dead workers, and running them again once.

Finished trials are in the storage the moment they finish. A trial interrupted by Ctrl-C is
failed with ``interrupted`` set; a trial whose worker was killed stays RUNNING until:

- RDB storages: Optuna's heartbeat (:func:`hwsparse.storage.open_storage`) fails it once its
  heartbeat is older than the grace period, and ``RetryHeartbeatStaleTrialCallback`` enqueues it
  again (``failed_trial`` system attribute). Every worker checks before each trial it starts.
- Journal storages: each worker holds an ``flock`` on its own lock file
  (``NAME.workers/<id>.lock``), which the OS releases when the process dies, whatever its PID
  namespace or hostname; a trial of a run from before worker locks is judged by its PID on this
  host. Checked when a worker starts.

Either way the trial's parameters run again once (``retry_of`` or ``failed_trial``), so a
resumed study re-runs it and nothing finished is lost; the re-run keeps the attributes that
said why the trial was queued (:data:`QUEUED_AS`; the heartbeat's retry keeps all of them).
Only public Optuna API is used.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import re
import socket
import uuid
import warnings
from collections.abc import Iterable
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from hwsparse.storage import Storage, worker_id

WORKER_LOCK_ATTR = "worker_lock"
# user attributes a queued trial is enqueued with, saying why (the initial design, a redraw,
# tune's default regularizer); a re-run of the trial is still that trial
QUEUED_AS = ("warm_start", "redraw_of", "default_regularizer")
_held_locks: dict[str, tuple[str, int]] = {}  # workers folder -> (lock id, open fd holding it)
_LOCK_ID = re.compile(r"[0-9a-f]{32}")


def retry_source(t: FrozenTrial) -> int | None:
    """The number of the trial that ``t`` runs again (ours: ``retry_of``; the heartbeat's:
    ``failed_trial``), or None."""
    source = t.system_attrs.get("failed_trial", t.user_attrs.get("retry_of"))
    return int(source) if source is not None else None


def retried_numbers(trials: Iterable[FrozenTrial]) -> set[int]:
    """Numbers of the trials that another trial runs again (queued, running or finished)."""
    return {n for n in map(retry_source, trials) if n is not None}


# --- worker locks (journal storages) -------------------------------------------------------------
#
# A PID says nothing across containers that share a hostname or across PID namespaces. So each
# worker of a journal storage holds an exclusive flock on its own file, NAME.workers/<id>.lock
# next to the journal, for as long as it lives, and records <id> on its trials
# (``worker_lock``). The OS drops a flock when its process dies, however it dies and whatever
# its PID namespace: a RUNNING trial is dead exactly when its worker's lock can be taken.


def workers_folder(journal: str | Path) -> Path:
    """Where the worker locks of the journal file ``journal`` live: ``NAME.workers/``."""
    return Path(journal).with_suffix(".workers")


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
    atexit.register(release_worker_lock, journal)
    return lock_id


def release_worker_lock(journal: str | Path) -> None:
    """This process has stopped running trials on ``journal``: drop its worker lock, so that a
    trial it left RUNNING (its end state could not be written: a full disk) counts as dead to
    the next run, in this process too (a later run takes a new lock)."""
    folder = workers_folder(journal)
    held = _held_locks.pop(str(folder), None)
    if held is not None:
        (folder / f"{held[0]}.lock").unlink(missing_ok=True)
        os.close(held[1])


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


def mark_worker(trial: optuna.Trial, storage: Storage) -> None:
    """Record who runs ``trial``: host:pid, and on a journal storage this worker's lock."""
    trial.set_user_attr("worker", worker_id())
    if storage.journal is not None:
        trial.set_user_attr(WORKER_LOCK_ATTR, worker_lock(storage.journal))


def _dead_journal_worker(t: FrozenTrial, journal: Path) -> bool:
    lock_id = t.user_attrs.get(WORKER_LOCK_ATTR)
    if isinstance(lock_id, str):
        return lock_is_free(journal, lock_id)  # whatever host or PID it names
    host, _, pid = str(t.user_attrs.get("worker", "")).rpartition(":")
    return host == socket.gethostname() and pid.isdigit() and not _alive(int(pid))


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


def recover_interrupted(study: optuna.Study, storage: Storage) -> list[int]:
    """Fail trials whose worker is gone and enqueue every interrupted trial once again; returns
    the numbers of the trials that will run again."""
    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    if storage.journal is None:
        with warnings.catch_warnings():  # as Optuna's own optimize loop calls it
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # heartbeat: fails and queues a retry
    again: list[int] = []
    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    for t in trials:
        if t.number in running and t.state == TrialState.FAIL and t.number in retried:
            again.append(t.number)  # failed just now by the heartbeat check, queued again
            continue
        dead = False
        if t.state == TrialState.RUNNING and storage.journal is not None:
            dead = _dead_journal_worker(t, storage.journal)
            if dead:
                study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        interrupted = t.state == TrialState.FAIL and t.user_attrs.get("interrupted")
        if (dead or interrupted) and t.number not in retried and t.params:
            why = {k: v for k, v in t.user_attrs.items() if k in QUEUED_AS}
            study.enqueue_trial(t.params, user_attrs={**why, "retry_of": t.number})
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
