"""Every command the README shows runs, in order, on small settings (an example that cannot work
fails the build).

The README's ```bash blocks are read top to bottom; each ``hwsparse ...`` command (``&&`` chains
split, comments dropped) runs through the real CLI in one scratch folder, so later examples see
what earlier ones made (the study of ``hwsparse search``, the ticket of ``hwsparse ticket``).
Settings that only make a run long are shrunk by :data:`SMALL`; nothing else is changed. The
``python`` block runs with its epochs shrunk the same way. The two install lines at the top are
what CI itself runs (`.ci/run`) and what the newcomer checks in a clean clone do; ``pip install``
lines are skipped here.
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
    for args in readme_commands():
        small = shrink(args)
        result = runner.invoke(app, small)
        assert result.exit_code == 0, (
            f"README command `hwsparse {' '.join(args)}` (run as {small}) exited "
            f"{result.exit_code}: {result.stderr[-2000:]}{result.exception!r}"
        )


def test_readme_python_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for block in _blocks("python"):
        code = re.sub(r"epochs=\d+", "epochs=1", block)
        code = code.replace('api.ticket("digits", "mlp", ', 'api.ticket("digits", "mlp", '
                            "search_epochs=1, train=TrainConfig(epochs=1), ")  # fmt: skip
        code = code.replace('seeds="3"', 'seeds="1"')
        exec(compile(code, str(README), "exec"), {})
