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


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hwsparse")
    except PackageNotFoundError:  # running from a source tree that is not installed
        from hwsparse import __version__

        return __version__


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"hwsparse {_version()}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False,
        "--version",
        help="Print the version and exit.",
        callback=_print_version,
        is_eager=True,
    ),
) -> None:
    """hwsparse: find sparse neural networks (lottery tickets) that fit an edge device."""
    from hwsparse.cli._common import quiet_optuna

    quiet_optuna()


# Imported for their side effect of registering commands on `app`.
from hwsparse.cli import _cost, _engine, _search, _tune  # noqa: E402,F401


def main() -> None:
    app()
