"""Optuna storages and studies: where studies live, and how workers create or join one.

One storage URL (or journal file) is the only coordination point: every worker process that
opens the same storage joins the same studies, on this machine or on others (an RDB server such
as PostgreSQL). Journal files get repaired or refused on open (:mod:`hwsparse._journal`); their
writes are cut back when they fail, so no torn record stays.

Where things go. Runs default to ``./runs`` under the folder the command runs in;
``HWSPARSE_HOME`` names another folder for them, ``--storage`` another storage. A study keeps
its tickets in the artifact location it was created with (:mod:`hwsparse.artifact_store`),
recorded in the study, so every worker and every inspector finds them with no flag.

Liveness. RDB storages get Optuna's heartbeat (a thread per running trial, every
``heartbeat_s`` seconds whatever an epoch takes); a trial whose heartbeat is older than
``GRACE_BEATS`` beats is failed and enqueued again once (``RetryHeartbeatStaleTrialCallback``).
Journal storages use worker locks instead (:mod:`hwsparse.recovery`).
"""

from __future__ import annotations

import json
import os
import socket
import time
import warnings
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import DuplicatedStudyError
from optuna.storages import (
    BaseStorage,
    JournalStorage,
    RDBStorage,
    RetryHeartbeatStaleTrialCallback,
)
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock
from optuna.study import StudyDirection

from hwsparse import _journal
from hwsparse.errors import InputError

STALE_LOCK_S = 30  # Optuna's grace period: a journal lock this old is left by a dead writer
HEARTBEAT_S = 10  # seconds between a running trial's heartbeats on an RDB storage
GRACE_BEATS = 3  # a trial that missed this many heartbeats is dead (failed, run again once)
CREATE_WAIT_S = 30.0  # how long a joining worker waits for the creator to describe the study
HOME_ENV = "HWSPARSE_HOME"


# --- where runs go -------------------------------------------------------------------------------


def runs_dir() -> Path:
    """Where runs go by default: ``$HWSPARSE_HOME`` when set, else ``./runs`` under the folder
    the user works in (now)."""
    home = os.environ.get(HOME_ENV)
    if home:
        return Path(home).expanduser().resolve()
    return Path.cwd() / "runs"


def default_storage() -> Path:
    return runs_dir() / "hwsparse.journal"


def __getattr__(name: str) -> Path:  # RUNS_DIR / DEFAULT_STORAGE, evaluated when asked
    if name == "RUNS_DIR":
        return runs_dir()
    if name == "DEFAULT_STORAGE":
        return default_storage()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- storage -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Storage:
    """An opened storage, the text it was given as, and where its artifacts go by default.

    ``journal`` is the journal file of a journal storage (None for an RDB). ``artifacts`` is
    the default artifact location for a study created here (a folder or ``s3://...``); a study
    records its own (:func:`hwsparse.artifact_store.study_artifacts`). ``server`` is True for
    an RDB server shared by machines (PostgreSQL, MySQL): its studies need an artifact
    location every machine reaches, given at creation."""

    url: str
    backend: BaseStorage
    artifacts: str
    journal: Path | None = None
    server: bool = False
    artifacts_chosen: bool = False  # ``artifacts`` is what the user gave (--artifacts)

    @property
    def shown(self) -> str:
        """The URL with its password hidden (for messages and output)."""
        return hide_password(self.url)


def hide_password(url: str) -> str:
    if "://" not in url or "@" not in url:
        return url
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL sqlalchemy parses: hide what is between ':' and '@'
        scheme, _, rest = url.partition("://")
        creds, _, host = rest.rpartition("@")
        return f"{scheme}://{creds.partition(':')[0]}:***@{host}"


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


def _open_rdb(url: str, heartbeat_s: int) -> RDBStorage:
    """An RDB storage with Optuna's heartbeat. Several workers may open a fresh database at
    once; the one whose table creation loses the race tries again."""
    kwargs: dict[str, Any] = {"connect_args": {"timeout": 30}} if url.startswith("sqlite") else {}
    if url.startswith("postgresql"):
        kwargs = {"connect_args": {"connect_timeout": 10}}
    for attempt in range(5):
        try:
            with warnings.catch_warnings():  # the heartbeat's retry callback is "experimental"
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = RDBStorage(
                    url,
                    engine_kwargs=kwargs,
                    heartbeat_interval=heartbeat_s,
                    grace_period=GRACE_BEATS * heartbeat_s,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
                )
            # its pooled connections are closed when it goes, not left to the garbage collector
            weakref.finalize(storage, storage.engine.dispose)
            return storage
        except Exception as exc:  # sqlalchemy raises many kinds for a bad URL or server
            line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if attempt < 4 and _schema_race(line):
                time.sleep(0.2 * (attempt + 1))
                continue
            raise InputError(f"cannot open storage {hide_password(url)}: {line}") from None
    raise AssertionError("unreachable")


def _schema_race(line: str) -> bool:
    """A failure of concurrent table creation (another worker made the schema just now)."""
    words = ("already exists", "duplicate key", "UniqueViolation", "IntegrityError")
    return any(w in line for w in words)


def open_storage(
    text: str | Path | None = None, *, create: bool = False, heartbeat_s: int = HEARTBEAT_S
) -> Storage:
    """Open an Optuna storage: a ``sqlite:///``/``postgresql+psycopg://``/``mysql+pymysql://``
    URL, or a path to a journal file (default ``runs/hwsparse.journal``; best for several
    processes on one machine).

    Artifacts (the tickets) default to a folder next to a file storage (``NAME.artifacts/``);
    a server storage has no default (``--artifacts`` names one when its study is created).
    ``heartbeat_s``: seconds between heartbeats of a running trial on an RDB storage.
    """
    if heartbeat_s < 1:
        raise InputError(f"--heartbeat must be >= 1 second (got {heartbeat_s})")
    raw = str(text) if text is not None else str(default_storage())
    if "://" in raw:
        server = not raw.startswith("sqlite")
        artifacts = ""
        if raw.startswith("sqlite:///"):
            db = Path(raw.removeprefix("sqlite:///"))
            if not create and not db.is_file():
                raise InputError(f"no storage at {raw}: the file {db} does not exist")
            artifacts = str(db.resolve().with_suffix(".artifacts"))
        return Storage(raw, _open_rdb(raw, heartbeat_s), artifacts, server=server)
    path = Path(raw).expanduser().resolve()
    if not create and not path.is_file():
        raise InputError(
            f"no storage at {path} (run `hwsparse search` first, or pass --storage "
            "PATH|sqlite:///FILE|postgresql+psycopg://...)"
        )
    backend = _open_journal(path, create)
    return Storage(str(path), backend, str(path.with_suffix(".artifacts")), journal=path)


def load_study(name: str, storage: Storage) -> optuna.Study:
    names = optuna.study.get_all_study_names(storage=storage.backend)
    if name not in names:
        raise InputError(
            f"no study {name!r} in {storage.shown}; studies there: {', '.join(names) or 'none'}"
        )
    return optuna.load_study(study_name=name, storage=storage.backend)


def open_study(
    name: str,
    storage: Storage,
    directions: list[StudyDirection],
    describe: Callable[[optuna.Study], None],
    check: Callable[[optuna.Study], None],
    described_by: str,
) -> optuna.Study:
    """Create study ``name`` or join it, race-free across workers and machines.

    The worker whose ``create_study`` succeeds describes the study (``describe(study)`` sets
    its user attributes, ``described_by`` last, so its presence means the whole description is
    there); every other
    worker loads it, waits up to ``CREATE_WAIT_S`` for that description and then ``check``s
    it (a worker with another space or target is refused before it writes anything). A study
    left undescribed by a creator that died, with no trial, is described by the next worker.
    """
    try:
        study = optuna.create_study(
            study_name=name, storage=storage.backend, directions=directions
        )
    except DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage.backend)
        deadline = time.monotonic() + CREATE_WAIT_S
        while described_by not in study.user_attrs:
            if time.monotonic() > deadline:
                if study.get_trials(deepcopy=False):
                    break  # not made by us: check() says so
                describe(study)  # its creator died before describing it
                break
            time.sleep(0.1)
            study = optuna.load_study(study_name=name, storage=storage.backend)
        check(study)
        return study
    describe(study)
    return study


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"
