"""Search spaces: YAML files that say which knobs of the method a study tunes, and how.

A space file (``search_spaces/default.yaml`` is the default)::

    version: 1
    params:                      # searched: one entry per knob
      penalty: {choices: [log, l1, exp, mcp]}
      density: {low: 0.01, high: 0.5, log: true}
      search_epochs: {low: 5, high: 20, step: 5}
    fixed:                       # not searched: plain values
      mask_first: true

Knobs (``KNOBS``) are fields of :class:`hwsparse.train.TicketConfig`,
:class:`hwsparse.masks.MaskConfig` or :class:`hwsparse.train.TrainConfig`, plus
``eps_factor`` (eps as a multiple of the penalty's default eps, so one range serves every
penalty) and ``binarize`` (``density``: top-k to the ``density`` knob with the strength adapted
to reach it; ``threshold``: a fixed ``strength`` and the mask threshold). A parameter is
``choices`` (categorical), ``low``/``high`` floats (``log: true`` for a log scale), or
``low``/``high`` ints (``step``). Unknown keys, unknown knobs, wrong types and empty ranges
are errors that name what is valid. Loaded with ``yaml.safe_load`` only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hwsparse.errors import InputError, valid_names

# knob -> (type, allowed categorical values or None)
KNOBS: dict[str, tuple[type, tuple[Any, ...] | None]] = {
    "penalty": (str, ("l1", "log", "exp", "lp", "scad", "mcp")),
    "strength": (float, None),
    "eps_factor": (float, None),
    "mask_lr": (float, None),
    "search_epochs": (int, None),
    "binarize": (str, ("density", "threshold")),
    "threshold": (float, None),
    "density": (float, None),
    "param": (str, ("projected", "sigmoid")),
    "temperature": (float, None),
    "anneal": (float, None),
    "granularity": (str, ("weight", "channel")),
    "mask_first": (bool, None),
    "mask_last": (bool, None),
    "epochs": (int, None),
    "lr": (float, None),
    "rewind_steps": (int, None),
    "batch_size": (int, None),  # training samples per optimiser step
    # --strength auto or a fixed lambda with top-k to the density (hwsparse tune), and the
    # auto controller's settings (TicketConfig.auto_ramp, auto_rate)
    "strength_mode": (str, ("auto", "fixed")),
    "auto_ramp": (float, None),
    "auto_rate": (float, None),
}

_PACKAGE = Path(__file__).resolve().parent
# shipped spaces: inside an installed wheel (setup.py copies them), else the checkout's folder
SPACES_DIR = next(
    (p for p in (_PACKAGE / "_spaces", _PACKAGE.parent / "search_spaces") if p.is_dir()),
    _PACKAGE.parent / "search_spaces",
)


@dataclass(frozen=True)
class Param:
    """One searched knob: categorical (``choices``) or a numeric range."""

    name: str
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: int | None = None

    @property
    def is_int(self) -> bool:
        return KNOBS[self.name][0] is int


@dataclass(frozen=True)
class SearchSpace:
    """A validated space: searched params and fixed values, plus where it came from."""

    params: tuple[Param, ...]
    fixed: tuple[tuple[str, Any], ...]
    source: str

    def as_dict(self) -> dict[str, Any]:
        """The resolved space, for storing with a study and comparing on resume."""
        params: dict[str, Any] = {}
        for p in self.params:
            if p.choices is not None:
                params[p.name] = {"choices": list(p.choices)}
            else:
                spec: dict[str, Any] = {"low": p.low, "high": p.high}
                if p.log:
                    spec["log"] = True
                if p.step is not None:
                    spec["step"] = p.step
                params[p.name] = spec
        return {"version": 1, "params": params, "fixed": dict(self.fixed)}


def space_names() -> list[str]:
    return sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))


def load_space(name_or_path: str | Path = "default") -> SearchSpace:
    """Load a space by name (a file in search_spaces/) or by path."""
    text = str(name_or_path)
    path = Path(text)
    if not (text.endswith((".yaml", ".yml")) or path.is_file()):
        path = SPACES_DIR / f"{text}.yaml"
        if not path.is_file():
            raise InputError(
                f"unknown search space {text!r}; valid: {valid_names(space_names())} "
                "or a path to a .yaml file"
            )
    if not path.is_file():
        raise InputError(f"search space file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "syntax error"
        raise InputError(f"{path}: malformed YAML: {first}") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: malformed YAML: not UTF-8 text ({exc.reason})") from None
    except RecursionError:
        raise InputError(f"{path}: malformed YAML: nested too deeply") from None
    return parse_space(data, str(path))


def parse_space(data: Any, source: str = "<space>") -> SearchSpace:
    """Validate a space given as a mapping (see the module docstring)."""
    if not isinstance(data, dict):
        raise InputError(f"{source}: a search space is a mapping with 'params' and 'fixed'")
    unknown = set(data) - {"version", "params", "fixed"}
    if unknown:
        raise InputError(
            f"{source}: unknown key {sorted(unknown)[0]!r}; valid: fixed, params, version"
        )
    if data.get("version", 1) != 1:
        raise InputError(f"{source}: unsupported version {data.get('version')!r}; valid: 1")
    raw_params, raw_fixed = data.get("params") or {}, data.get("fixed") or {}
    if not isinstance(raw_params, dict) or not isinstance(raw_fixed, dict):
        raise InputError(f"{source}: 'params' and 'fixed' must be mappings")
    both = set(raw_params) & set(raw_fixed)
    if both:
        raise InputError(f"{source}: {sorted(both)[0]!r} is both searched and fixed")
    params = tuple(_param(name, spec, source) for name, spec in raw_params.items())
    fixed = tuple((name, _value(name, value, source)) for name, value in raw_fixed.items())
    if not params:
        raise InputError(f"{source}: 'params' is empty: nothing to search")
    return SearchSpace(params, fixed, source)


def _knob(name: str, source: str) -> tuple[type, tuple[Any, ...] | None]:
    if name not in KNOBS:
        raise InputError(f"{source}: unknown knob {name!r}; valid: {valid_names(KNOBS)}")
    return KNOBS[name]


def _value(name: str, value: Any, source: str) -> Any:
    kind, allowed = _knob(name, source)
    where = f"{source}: {name}"
    if kind is bool:
        if not isinstance(value, bool):
            raise InputError(f"{where}: expected true or false, got {value!r}")
        return value
    if kind is str:
        if allowed is not None and value not in allowed:
            raise InputError(f"{where}: {value!r} is not valid; valid: {valid_names(allowed)}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(f"{where}: expected a number, got {value!r}")
    if kind is int:
        if int(value) != value:
            raise InputError(f"{where}: expected a whole number, got {value!r}")
        value = int(value)
    if not math.isfinite(value) or value < 0:
        raise InputError(f"{where}: expected a finite number >= 0, got {value!r}")
    return value


def _param(name: str, spec: Any, source: str) -> Param:
    kind, allowed = _knob(name, source)
    where = f"{source}: params.{name}"
    if not isinstance(spec, dict):
        raise InputError(f"{where}: expected {{choices: [...]}} or {{low: .., high: ..}}")
    if "choices" in spec:
        extra = set(spec) - {"choices"}
        if extra:
            raise InputError(f"{where}: unknown key {sorted(extra)[0]!r}; valid: choices")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise InputError(f"{where}: choices must be a non-empty list")
        return Param(name, choices=tuple(_value(name, c, source) for c in choices))
    valid = {"low", "high", "log", "step"}
    extra = set(spec) - valid
    if extra:
        raise InputError(
            f"{where}: unknown key {sorted(extra)[0]!r}; valid: choices, high, log, low, step"
        )
    if kind not in (int, float):
        raise InputError(f"{where}: {name} is categorical; give choices: [...]")
    if "low" not in spec or "high" not in spec:
        raise InputError(f"{where}: a range needs both low and high")
    low, high = _value(name, spec["low"], source), _value(name, spec["high"], source)
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise InputError(f"{where}: log must be true or false")
    if not low < high:
        raise InputError(f"{where}: empty range: low {low} must be < high {high}")
    if log and low <= 0:
        raise InputError(f"{where}: a log range needs low > 0")
    step = spec.get("step")
    if step is not None and (kind is not int or not isinstance(step, int) or step < 1):
        raise InputError(f"{where}: step is for int knobs and must be a whole number >= 1")
    return Param(name, low=low, high=high, log=log, step=step)
