"""Shared pieces of the command line: consoles, error handling, JSON output."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from hwsparse._json import dumps
from hwsparse.errors import InputError

# Results go to stdout; progress and diagnostics go to stderr, so `--json` output pipes cleanly.
out = Console()
err = Console(stderr=True)

# fvcore calls torch.jit.script at import time; torch >= 2.14 turns that into a FutureWarning
# that would be printed on every run (see shared reference ecosystem.md §1.3).
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated")


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn bad input into a one-line message on stderr and exit code 2 (no traceback)."""
    try:
        yield
    except InputError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None


def print_json(payload: Any) -> None:
    """Print machine-readable output on stdout (and nothing else there)."""
    typer.echo(dumps(payload))


# --- options shared by several commands ---------------------------------------------------------

Dataset = Annotated[
    str,
    typer.Option(
        help="digits (embedded default), mnist1d, mnist10k, mnist, fashion-mnist, cifar10, "
        "or npz:PATH with arrays X, y."
    ),
]
DataDir = Annotated[
    Path | None, typer.Option(help="Folder with the files of mnist/fashion-mnist/cifar10.")
]
Model = Annotated[
    str,
    typer.Option(
        help="linear, mlp, lenet5, conv1d, conv4, resnet20, vgg16, or package.module:function."
    ),
]
Device = Annotated[str, typer.Option(help="auto (CUDA when present), cpu, cuda, cuda:N.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON on stdout, nothing else.")]
