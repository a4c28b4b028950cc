"""Journal files (Optuna's ``JournalFileBackend`` format: one JSON record per line), checked.

A process that dies or is interrupted in the middle of an append (crash, SIGKILL, Ctrl-C, a
full disk) can leave the last line torn: no newline, or not a complete JSON record. Optuna
itself skips such a line when it reads, but the next append is glued onto it, and from then on
the journal cannot be read at all. So:

- A *writer* (``hwsparse search``) repairs a torn tail on open: under the journal's lock it cuts
  the file back to the end of the last complete record and logs a warning (bytes dropped, path).
- A *reader* (``studies``, ``show``, ``plot``, ``export``) never changes the file: it logs a
  warning and reads what is complete (exactly what Optuna replays).
- A bad line anywhere before the last is damage this module cannot explain (a crash only tears
  the end): :class:`~hwsparse.errors.InputError` naming the byte offset; the file is untouched.
- :func:`append` (used for every write) cuts its own partial write back off when the write
  fails (full disk, Ctrl-C), so a failed write never leaves a torn record behind, and drops a
  torn tail left by a writer that died before it.

No Optuna here: the caller holds Optuna's journal lock where this module says so.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from hwsparse.errors import InputError

log = logging.getLogger("hwsparse")


@dataclass(frozen=True)
class Tail:
    """What a scan found: the file's size and where its last complete record ends."""

    size: int
    good: int

    @property
    def torn(self) -> int:
        """Bytes after the last complete record (0: the journal is whole)."""
        return self.size - self.good


def _is_record(line: bytes) -> bool:
    if not line.endswith(b"\n"):
        return False
    try:
        obj = json.loads(line)
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        return False
    return isinstance(obj, dict) and "op_code" in obj


def scan(path: Path) -> Tail:
    """Check every record of the journal at ``path``.

    Raises InputError (one line, with the byte offset) when a line before the last is not a
    complete record; a bad last line is a torn tail, reported in the returned :class:`Tail`.
    """
    good = offset = 0
    bad: tuple[int, int] | None = None  # (byte offset, line number) of a bad line
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            if bad is not None:
                at, bad_number = bad
                raise InputError(
                    f"storage {path} is damaged at byte {at} (line {bad_number} is not a "
                    f"complete journal record, and more records follow it); it was left "
                    f"unchanged: restore a copy, or keep what came before it with "
                    f"`truncate -s {at} {path}`"
                )
            if _is_record(line):
                good = offset + len(line)
            else:
                bad = (offset, number)
            offset += len(line)
    return Tail(offset, good)


def check(path: Path) -> Tail:
    """For readers: scan; a torn tail is reported (warning) and left in place."""
    tail = scan(path)
    if tail.torn:
        log.warning(
            f"storage {path} ends in a torn record ({tail.torn} bytes at byte {tail.good}, "
            "left by a write that was cut off); ignored it, read what is complete (the next "
            "`hwsparse search` on this storage drops it)"
        )
    return tail


def repair(path: Path) -> Tail:
    """For writers, holding the journal's lock: scan and cut a torn tail off (with a warning)."""
    tail = scan(path)
    if tail.torn:
        with open(path, "r+b") as f:
            f.truncate(tail.good)
            os.fsync(f.fileno())
        _dropped(path, tail)
    return Tail(tail.good, tail.good)


def _dropped(path: Path, tail: Tail) -> None:
    log.warning(
        f"storage {path} ended in a torn record ({tail.torn} bytes at byte {tail.good}, left "
        "by a write that was cut off); dropped it, the study keeps every record before it"
    )


def append(path: Path, data: bytes) -> None:
    """Append ``data`` (whole lines) to the journal, the caller holding the journal's lock.

    A torn tail left by a dead writer is cut off first; a write that fails (full disk, Ctrl-C)
    is cut back off, so the journal never keeps a partial record. Errors name ``path``.
    """
    fd = -1
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        start = os.fstat(fd).st_size
        if start and os.pread(fd, 1, start - 1) != b"\n":
            tail = scan(path)
            os.ftruncate(fd, tail.good)
            _dropped(path, tail)
            start = tail.good
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except BaseException:
            os.ftruncate(fd, start)  # frees what the partial write took: works on a full disk
            raise
    except OSError as exc:
        if exc.filename is not None:
            raise
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    finally:
        if fd >= 0:
            os.close(fd)
