"""Writes that a crash, a kill or a full disk cannot leave half done.

``atomic_write``: the bytes go to a temporary file in the same folder, are flushed to disk
(fsync), and the file is renamed over the final name, so readers see the old file or the new
one, never a mix. ``staged_dir``: a whole output folder is built beside the final one and swapped
in only when complete; the old folder is removed after the swap.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from hwsparse.errors import InputError


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], object]) -> Path:
    """Write ``path`` through ``write(file)`` atomically (temp file, fsync, rename)."""
    final = Path(path)
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, final)
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
    untouched. Between the two renames of the swap the old folder still exists, renamed
    ``.NAME.old-*``.

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
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
        os.replace(out, old / "previous")
    os.replace(stage, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
