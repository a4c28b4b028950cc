"""Regularizer presets: the knobs `hwsparse tune` found, in a YAML file others can reuse.

A preset (written by ``hwsparse tune --out FILE.yaml``)::

    kind: hwsparse-preset
    version: 1
    tuned_for: {dataset: digits, model: mlp, density: 0.05, granularity: weight}
    regularizer:                # knobs of search_spaces/*.yaml (hwsparse.space.KNOBS)
      penalty: log
      strength_mode: auto       # auto: lambda adapts to the density; fixed: `strength`
      auto_ramp: 0.6
      eps_factor: 1.3
      param: sigmoid
      temperature: 0.8
      anneal: 200.0
      mask_lr: 0.01
      search_epochs: 15
      rewind_steps: 20
    evidence: {...}             # what tune measured (informational, not read back)

``hwsparse ticket --preset FILE`` and ``hwsparse search --preset FILE`` read it. A preset for
another model is refused; another dataset or density is used with a note. Unknown keys, knobs
that are not regularizer knobs and bad values are errors naming what is valid; loaded with
``yaml.safe_load`` only.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from hwsparse.errors import InputError, valid_names
from hwsparse.space import Param, SearchSpace, _value

KIND = "hwsparse-preset"
# The regularizer: what tune searches and a preset fixes. Density and granularity are not in
# it: tune is told them, a device search decides them.
REGULARIZER_KNOBS = (
    "penalty",
    "strength_mode",
    "strength",
    "auto_ramp",
    "auto_rate",
    "eps_factor",
    "param",
    "temperature",
    "anneal",
    "mask_lr",
    "search_epochs",
    "rewind_steps",
)
_TOP_KEYS = ("evidence", "kind", "regularizer", "tuned_for", "version")
_TUNED_KEYS = ("dataset", "density", "granularity", "model")


@dataclass(frozen=True)
class Preset:
    """A tuned regularizer and what it was tuned for."""

    regularizer: dict[str, Any]
    dataset: str
    model: str
    density: float
    granularity: str = "weight"
    evidence: dict[str, Any] = field(default_factory=dict)
    source: str = "<preset>"

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": KIND,
            "version": 1,
            "tuned_for": {
                "dataset": self.dataset,
                "model": self.model,
                "density": self.density,
                "granularity": self.granularity,
            },
            "regularizer": dict(self.regularizer),
            "evidence": dict(self.evidence),
        }

    def notes(self, dataset: str, model: str, density: float | None) -> list[str]:
        """Refuse another model; one note per other difference (dataset, density)."""
        if model != self.model:
            raise InputError(
                f"{self.source} was tuned for model {self.model!r}, not {model!r}; "
                f"tune one for {model} with `hwsparse tune --model {model}`"
            )
        out = []
        if dataset != self.dataset:
            out.append(f"{self.source} was tuned on {self.dataset}, used here on {dataset}")
        if density is not None and abs(density - self.density) > 1e-9 * self.density:
            out.append(
                f"{self.source} was tuned at density {self.density:g}, used here at {density:g}"
            )
        return out

    def values(self) -> dict[str, Any]:
        """The knob values (as in a search space's ``fixed``), auto strength by default."""
        return {"strength_mode": "auto", **self.regularizer}


def parse_preset(data: Any, source: str = "<preset>") -> Preset:
    if not isinstance(data, dict):
        raise InputError(f"{source}: a preset is a mapping with kind, tuned_for, regularizer")
    unknown = set(data) - set(_TOP_KEYS)
    if unknown:
        raise InputError(
            f"{source}: unknown key {sorted(unknown)[0]!r}; valid: {valid_names(_TOP_KEYS)}"
        )
    if data.get("kind") != KIND:
        raise InputError(f"{source}: not a preset (kind must be {KIND!r})")
    if data.get("version", 1) != 1:
        raise InputError(f"{source}: unsupported version {data.get('version')!r}; valid: 1")
    tuned, reg = data.get("tuned_for"), data.get("regularizer")
    if not isinstance(tuned, dict) or not isinstance(reg, dict) or not reg:
        raise InputError(f"{source}: 'tuned_for' and 'regularizer' must be non-empty mappings")
    unknown = set(tuned) - set(_TUNED_KEYS)
    missing = {"dataset", "model", "density"} - set(tuned)
    if unknown or missing:
        what = f"unknown key {sorted(unknown)[0]!r}" if unknown else f"no {sorted(missing)[0]!r}"
        raise InputError(f"{source}: tuned_for: {what}; valid: {valid_names(_TUNED_KEYS)}")
    density = tuned["density"]
    if isinstance(density, bool) or not isinstance(density, int | float) or not 0 < density < 1:
        raise InputError(f"{source}: tuned_for.density must be in (0, 1), got {density!r}")
    bad = [k for k in reg if k not in REGULARIZER_KNOBS]
    if bad:
        raise InputError(
            f"{source}: regularizer: unknown knob {bad[0]!r}; "
            f"valid: {valid_names(REGULARIZER_KNOBS)}"
        )
    values = {k: _value(k, v, f"{source}: regularizer") for k, v in reg.items()}
    evidence = data.get("evidence") or {}
    if not isinstance(evidence, dict):
        raise InputError(f"{source}: evidence must be a mapping")
    granularity = _value("granularity", tuned.get("granularity", "weight"), f"{source}: tuned_for")
    return Preset(
        values,
        str(tuned["dataset"]),
        str(tuned["model"]),
        float(density),
        granularity,
        evidence,
        source,
    )


def load_preset(path: str | Path) -> Preset:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"preset file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "syntax error"
        raise InputError(f"{p}: malformed YAML: {first}") from None
    return parse_preset(data, str(p))


def write_preset(preset: Preset, path: str | Path) -> Path:
    p = Path(path)
    if p.suffix.lower() not in (".yaml", ".yml"):
        raise InputError(f"--out must be a .yaml file (got {p})")
    p.parent.mkdir(parents=True, exist_ok=True)
    head = (
        "# A regularizer tuned by `hwsparse tune`. Use it with `hwsparse ticket --preset FILE`\n"
        "# or `hwsparse search --preset FILE` (knobs: hwsparse/space.py, hwsparse/preset.py).\n"
    )
    p.write_text(head + yaml.safe_dump(preset.as_dict(), sort_keys=False))
    return p


def apply_to_space(
    space: SearchSpace, preset: Preset, warm_start: bool
) -> tuple[SearchSpace, dict[str, Any] | None]:
    """A device search with a preset.

    Without ``warm_start`` the preset's knobs are fixed (removed from the searched params) and
    the search decides the rest (density, granularity). With it the space is unchanged and the
    preset's values for knobs the space searches are returned, to be queued as the first trial.
    """
    values = preset.values()
    if warm_start:
        params = {p.name: p for p in space.params}
        first = {k: v for k, v in values.items() if k in params and fits_param(params[k], v)}
        return space, first or None
    # the preset is a density-mode regularizer: top-k to the density the search decides
    drop = {*values, "binarize", "threshold"}
    keep = tuple(p for p in space.params if p.name not in drop)
    if not keep:
        raise InputError(f"{space.source}: the preset fixes every knob; nothing left to search")
    fixed = {k: v for k, v in space.fixed if k not in values}
    fixed.update(values, binarize="density")
    fixed.pop("threshold", None)
    return replace(space, params=keep, fixed=tuple(fixed.items())), None


def fits_param(p: Param, value: Any) -> bool:
    """Whether ``value`` lies in ``p``'s distribution (Optuna enqueues only such values)."""
    if p.choices is not None:
        return value in p.choices
    assert p.low is not None and p.high is not None
    return bool(p.low <= value <= p.high)
