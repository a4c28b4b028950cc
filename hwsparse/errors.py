"""User-facing errors: bad input that the CLI reports in one line and exits 2 on."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TypeVar

T = TypeVar("T")


class InputError(ValueError):
    """Bad user input (unknown name, malformed file, impossible value).

    The message is one line that says what is valid; the CLI prints it and exits with code 2.
    """


def lookup(registry: Mapping[str, T], name: str, kind: str) -> T:
    """Return ``registry[name]`` or raise an InputError that lists the valid names.

    >>> lookup({"l1": 1}, "l2", "penalty")
    Traceback (most recent call last):
    ...
    hwsparse.errors.InputError: unknown penalty 'l2'; valid: l1
    """
    try:
        return registry[name]
    except KeyError:
        raise InputError(f"unknown {kind} {name!r}; valid: {valid_names(registry)}") from None


def valid_names(names: Iterable[str]) -> str:
    return ", ".join(sorted(names))
