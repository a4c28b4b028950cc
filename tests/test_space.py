"""Search-space YAML: shipped spaces load; every malformed case is a clear InputError."""

from __future__ import annotations

from pathlib import Path

import pytest

from hwsparse.errors import InputError
from hwsparse.space import KNOBS, load_space, parse_space, space_names


def test_shipped_spaces_load_and_use_known_knobs() -> None:
    assert space_names()[:1] == ["default"] or "default" in space_names()
    for name in space_names():
        space = load_space(name)
        assert space.params
        assert all(p.name in KNOBS for p in space.params)


def test_space_round_trips_through_its_dict() -> None:
    space = load_space("wide")
    again = parse_space(space.as_dict(), "again")
    assert again.params == space.params and again.fixed == space.fixed


def test_user_space_by_path(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("params:\n  density: {low: 0.01, high: 0.2, log: true}\n")
    space = load_space(str(path))
    assert [p.name for p in space.params] == ["density"] and space.params[0].log


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"params": {"lambda": {"low": 0.1, "high": 1.0}}}, "unknown knob 'lambda'; valid:"),
        ({"params": {"density": {"low": 0.5, "high": 0.1}}}, "empty range"),
        ({"params": {"density": {"low": 0.0, "high": 0.1, "log": True}}}, "log range"),
        ({"params": {"penalty": {"choices": ["log", "l0"]}}}, "'l0' is not valid"),
        ({"params": {"penalty": {"low": 1, "high": 2}}}, "categorical"),
        ({"params": {"density": {"low": 0.1}}}, "both low and high"),
        ({"params": {"density": {"low": 0.1, "high": 0.2, "spread": 1}}}, "unknown key 'spread'"),
        ({"params": {"epochs": {"low": 1, "high": 5, "step": 0.5}}}, "step"),
        ({"params": {"density": {"low": "a", "high": 1}}}, "expected a number"),
        ({"params": {}}, "nothing to search"),
        ({"params": {"density": {"low": 0.1, "high": 0.2}}, "fixed": {"density": 0.1}}, "both"),
        ({"params": {"penalty": {"choices": ["log"]}}, "extra": 1}, "unknown key 'extra'"),
        ({"version": 2, "params": {"penalty": {"choices": ["log"]}}}, "version"),
        ([1, 2], "mapping"),
    ],
)
def test_malformed_spaces(data: object, message: str) -> None:
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        parse_space(data, "t.yaml")


def test_malformed_yaml_and_missing_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("params: {density: [unclosed\n")
    with pytest.raises(InputError, match="malformed YAML"):
        load_space(str(bad))
    with pytest.raises(InputError, match="unknown search space 'nope'; valid: .*default"):
        load_space("nope")
    with pytest.raises(InputError, match="not found"):
        load_space(str(tmp_path / "missing.yaml"))
