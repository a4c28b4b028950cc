"""Every command the README shows runs, in order, on small settings (an example that cannot work
fails the build).

The README's ```bash blocks are read top to bottom; each ``hwsparse ...`` command (``&&`` chains
split, comments dropped) runs through the real CLI in one scratch folder, so later examples see
what earlier ones made (the study of ``hwsparse search``, the ticket of ``hwsparse ticket``).
Settings that only make a run long are shrunk by :data:`SMALL`; nothing else is changed. The
``python`` block runs with its epochs shrunk the same way. The two install lines at the top are
what CI itself runs (`.ci/run`) and what the newcomer checks in a clean clone do; ``pip install``
lines are skipped here.

The "Scaling out" commands that name the README's database (:data:`DATABASE`) run in their own
test against a fresh database on the test PostgreSQL server, with the shared artifact folder
(:data:`SHARED`) in the scratch folder; those that name GPUs (``--gpus``) run only where that
many GPUs are visible (this project's CI has none, so they have not run there).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hwsparse.cli import app

README = Path(__file__).resolve().parent.parent / "README.md"
runner = CliRunner()

# option -> value that keeps the run short; appended when the command lacks the option
SMALL: dict[str, dict[str, str]] = {
    "search": {"--trials": "2", "--epochs": "1"},
    "tune": {"--trials": "2", "--epochs": "1", "--seeds": "1"},
    "ticket": {"--epochs": "1", "--search-epochs": "1"},
    "compare": {"--seeds": "1", "--epochs": "1", "--search-epochs": "1"},
    "calibrate": {"--quick": ""},
}
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
DATABASE = "postgresql+psycopg://hwsparse:PASSWORD@db-host/hwsparse"  # the README's example
SHARED = "/mnt/shared/hwsparse-tickets"  # the README's shared folder


def _gpus_named(args: list[str]) -> int:
    """How many GPUs a command names with ``--gpus`` (0: none)."""
    return len(args[args.index("--gpus") + 1].split(",")) if "--gpus" in args else 0


def _needs(args: list[str]) -> str | None:
    """What a command needs beyond this folder: "database", "gpus" or None."""
    if DATABASE in args:
        return "database"
    return "gpus" if _gpus_named(args) else None


def _run(commands: list[list[str]], replace: dict[str, str]) -> None:
    for args in commands:
        small = [replace.get(word, word) for word in shrink(args)]
        result = runner.invoke(app, small)
        assert result.exit_code == 0, (
            f"README command `hwsparse {' '.join(args)}` (run as {small}) exited "
            f"{result.exit_code}: {result.stderr[-2000:]}{result.exception!r}"
        )


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), flags=re.S)


def readme_commands() -> list[list[str]]:
    """The ``hwsparse`` commands of the README's bash blocks, in order, as argument lists."""
    commands = []
    for block in _blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                if words and words[0] == "hwsparse":
                    commands.append(words[1:])
    return commands


def shrink(args: list[str]) -> list[str]:
    small = SMALL.get(args[0], {})
    out = list(args)
    for i, word in enumerate(out):
        if word in small and small[word] and i + 1 < len(out):
            out[i + 1] = small[word]
    for option, value in small.items():
        if option not in out:
            out += [option, value] if value else [option]
    return out


def test_readme_has_the_examples_this_test_runs() -> None:
    names = {c[0] for c in readme_commands()}
    assert {"search", "ticket", "export", "estimate", "devices", "compare"} <= names


def test_every_readme_command_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _run([args for args in readme_commands() if _needs(args) is None], {})


def test_readme_database_commands_run(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commands = [args for args in readme_commands() if _needs(args) == "database"]
    assert any("--artifacts" in args for args in commands)
    monkeypatch.chdir(tmp_path)
    _run(commands, {DATABASE: pg_url, SHARED: str(tmp_path / "shared")})
    assert any((tmp_path / "shared").iterdir())  # the tickets went to the shared folder


def test_readme_gpu_commands_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    commands = [args for args in readme_commands() if _needs(args) == "gpus"]
    assert commands
    need = max(map(_gpus_named, commands))
    if torch.cuda.device_count() < need:
        pytest.skip(f"the README's --gpus commands need {need} GPUs; this machine has fewer")
    monkeypatch.chdir(tmp_path)
    _run(commands, {})


def test_readme_python_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for block in _blocks("python"):
        code = re.sub(r"epochs=\d+", "epochs=1", block)
        code = code.replace('api.ticket("digits", "mlp", ', 'api.ticket("digits", "mlp", '
                            "search_epochs=1, train=TrainConfig(epochs=1), ")  # fmt: skip
        code = code.replace('seeds="3"', 'seeds="1"')
        exec(compile(code, str(README), "exec"), {})
