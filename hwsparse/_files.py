"""Writes that a crash, a kill or a full disk cannot leave half done.

``atomic_write``: the bytes go to a temporary file in the same folder, are flushed to disk
(fsync), and the file is renamed over the final name, so readers see the old file or the new
one, never a mix. ``staged_dir``: a whole output folder is built beside the final one and swapped
in only when complete; the old folder is removed after the swap.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from hwsparse.errors import InputError


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], object]) -> Path:
    """Write ``path`` through ``write(file)`` atomically (temp file, fsync, rename)."""
    final = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
    except OSError as exc:  # name the file the user asked for, not our temporary name
        raise OSError(exc.errno, exc.strerror, str(final)) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, final)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.filename not in (None, tmp):
            raise
        raise OSError(exc.errno, exc.strerror, str(final)) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return final


def atomic_write_text(path: str | Path, text: str) -> Path:
    data = text.encode()
    return atomic_write(path, lambda f: f.write(data))


@contextmanager
def staged_dir(final: str | Path, marker: str) -> Iterator[Path]:
    """Yield an empty folder beside ``final``; when the block ends without an error, it replaces
    ``final`` (whose old contents are then deleted); on an error it is deleted and ``final`` is
    untouched. On Linux the swap is one atomic exchange of the two folders; elsewhere it is two
    renames, and between them the old folder still exists, renamed ``.NAME.old-*``.

    An existing ``final`` is replaced only if it is empty or holds ``marker`` (a file only this
    kind of folder has, e.g. ``card.json``): anything else is refused, never deleted.
    """
    out = Path(final)
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or (out / marker).exists())):
        raise InputError(
            f"{out} exists and is not an earlier output of this command (no {marker}); "
            "choose a new or empty folder"
        )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    except OSError as exc:  # name the folder the user gave, not our staging name
        raise OSError(exc.errno, exc.strerror, str(out)) from None
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    os.chmod(stage, 0o777 & ~umask())
    if out.exists() and _exchange(stage, out):  # one atomic step: the old folder is now stage
        shutil.rmtree(stage, ignore_errors=True)
        return
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
        os.replace(out, old / "previous")
    os.replace(stage, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``), so no reader
    and no crash ever sees ``b`` missing; False where the OS or filesystem cannot."""
    if sys.platform != "linux":
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):  # glibc < 2.28, another libc
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
