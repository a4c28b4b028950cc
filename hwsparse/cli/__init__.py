"""The `hwsparse` command line (typer + rich live only in this package).

Each sub-module registers the commands of one area on the shared ``app``.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    help="hwsparse: find sparse neural networks (lottery tickets) that fit an edge device.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Imported for their side effect of registering commands on `app`.
from hwsparse.cli import _cost, _engine, _search  # noqa: E402,F401


def main() -> None:
    app()
