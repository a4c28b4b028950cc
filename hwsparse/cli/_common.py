"""Shared pieces of the command line: consoles, error handling, JSON output."""

from __future__ import annotations

import errno
import logging
import os
import shlex
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from hwsparse._json import dumps
from hwsparse.errors import InputError

# Results go to stdout; progress and diagnostics go to stderr, so `--json` output pipes cleanly.
out = Console()
err = Console(stderr=True)

# fvcore calls torch.jit.script at import time; torch >= 2.14 turns that into a FutureWarning
# that would be printed on every run (see shared reference ecosystem.md §1.3).
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated")


class _Warnings(logging.Handler):
    """Warnings of the library (logger ``hwsparse``) as one line each on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        text = escape(record.getMessage())
        err.print(f"[yellow]warning:[/yellow] {text}", highlight=False, soft_wrap=True)


_log = logging.getLogger("hwsparse")
if not any(isinstance(h, _Warnings) for h in _log.handlers):
    _log.addHandler(_Warnings(logging.WARNING))


def quiet_optuna() -> None:
    """The CLI's logging of Optuna (process-wide, so never done by the library): warnings only,
    and no second report of a failed trial (the CLI prints it in one line)."""
    import optuna

    from hwsparse.search import NoFailedTrialLog

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logger = logging.getLogger("optuna.study._optimize")
    if not any(isinstance(f, NoFailedTrialLog) for f in logger.filters):
        logger.addFilter(NoFailedTrialLog())


class Interrupted(Exception):
    """Ctrl-C, with the one line to print (what was kept, how to resume); exit 130."""


def command_line() -> str:
    """The command line this process was started with, to run again."""
    argv = list(sys.argv)
    if argv and Path(argv[0]).name == "__main__.py":  # python -m hwsparse
        argv[0:1] = ["python", "-m", "hwsparse"]
    elif argv and Path(argv[0]).name == "hwsparse":
        argv[0] = "hwsparse"
    return shlex.join(argv)


_WRITE_ONLY = {errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EEXIST}


def os_error_line(exc: OSError) -> str:
    """One line for a filesystem failure: what was being done (read or write), path, reason."""
    path = exc.filename
    reason = exc.strerror or str(exc)
    if path is None:
        return f"cannot write or read a file: {reason}"
    if exc.errno in _WRITE_ONLY:
        op = "write"
    elif isinstance(exc, FileNotFoundError):
        op = "find"
    elif os.path.exists(path) and not os.access(path, os.R_OK):
        op = "read"
    else:
        op = "write"  # nothing that exists and reads fine fails but for writing
    where = f"{path} -> {exc.filename2}" if exc.filename2 else f"{path}"
    return f"cannot {op} {where}: {reason}"


@contextmanager
def user_errors(interrupted: Callable[[], str] | None = None) -> Iterator[None]:
    """Turn bad input and filesystem failures into a one-line message on stderr and exit code
    2, Ctrl-C into one line and exit code 130 (no traceback).

    ``interrupted()`` says, after Ctrl-C, what was kept and how to resume (default: run the
    same command again)."""
    try:
        yield
    except InputError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None
    except OSError as exc:  # PermissionError, read-only or full filesystem, ...
        line = escape(os_error_line(exc))
        err.print(f"[red]error:[/red] {line}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None
    except Interrupted as exc:
        err.print(f"[yellow]interrupted:[/yellow] {escape(str(exc))}", highlight=False,
                  soft_wrap=True)  # fmt: skip
        raise typer.Exit(code=130) from None
    except KeyboardInterrupt:
        line = f"stopped before it finished; to run it again: {command_line()}"
        if interrupted is not None:
            try:
                line = interrupted()
            except (Exception, KeyboardInterrupt):  # the generic line is still true
                pass
        err.print(
            f"[yellow]interrupted:[/yellow] {escape(line)}",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(code=130) from None


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
Precision = Annotated[
    str,
    typer.Option(
        help="Training precision: auto (bf16 on a GPU that supports it, else fp32), fp32, bf16, "
        "or fp16 (with loss scaling). Evaluation is always fp32."
    ),
]
BatchSize = Annotated[
    int | None, typer.Option(help="Training samples per optimiser step (default 64).")
]
Deterministic = Annotated[
    bool,
    typer.Option(help="Deterministic torch algorithms: repeatable on a GPU, and slower there."),
]
TrustCode = Annotated[
    bool,
    typer.Option(
        "--trust-code",
        help="Build a package.module:function model that a ticket or study names (imports and "
        "runs that module). Without it only registry models, or the --model you give, load.",
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON on stdout, nothing else.")]
Threads = Annotated[
    int | None,
    typer.Option(
        help="CPU threads torch may use (default: torch's own choice); lower it when other "
        "jobs share the machine, as oversubscribed threads slow training many times over."
    ),
]


def set_threads(n: int | None) -> None:
    """``--threads N``: torch.set_num_threads(N); None leaves torch's default."""
    if n is None:
        return
    if n < 1:
        raise InputError(f"--threads must be >= 1 (got {n})")
    import torch

    torch.set_num_threads(n)


def live_progress(as_json: bool) -> bool:
    """Draw live progress bars only on a terminal (piped stderr gets plain lines instead)."""
    return not as_json and err.is_terminal


class StudyBars:
    """A study's progress on ``console`` (stderr): live bars for the trials and for the epochs
    of the running trial, drawn only when ``live`` and cleared at the end (a summary line
    replaces them); without a terminal, one plain line per finished trial or stage instead
    (nothing with ``--json``)."""

    def __init__(
        self, title: str, planned: int | None, live: bool, as_json: bool, console: Console
    ) -> None:
        self.console, self.log = console, not live and not as_json
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[unit]}"),
            TimeElapsedColumn(),
            console=console,
            disable=not live,
            transient=True,
        )
        self.trials = self.progress.add_task(title, total=planned, unit="trials")
        self.epochs = self.progress.add_task(
            "waiting for the first epoch", total=None, unit="epochs"
        )
        self.current = ""  # what is training now ("trial 3", or a stage)

    def __enter__(self) -> StudyBars:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)  # type: ignore[arg-type]

    def start(self, what: str) -> None:
        self.current = what
        self.progress.update(self.epochs, description=f"{what}: starting", completed=0)

    def epoch(self, phase: str, epoch: int, epochs: int, val_accuracy: float) -> None:
        self.progress.update(
            self.epochs,
            description=f"{self.current}: {phase} epoch {epoch}/{epochs}, "
            f"val {100 * val_accuracy:.1f} %",
            completed=epoch,
            total=epochs,
        )

    def finished(self, number: int, what: str) -> None:
        self.progress.update(self.trials, advance=1, description=f"trial {number}: {what}")
        self.line(f"trial {number}: {what}")

    def line(self, text: str) -> None:
        """A plain line for a log (no terminal); nothing when live or with --json."""
        if self.log:
            self.console.print(text, highlight=False)
