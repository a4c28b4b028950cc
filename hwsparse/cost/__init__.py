"""Hardware cost model: FLOPs, memory and latency of a (masked) network on a device profile.

Plain PyTorch; no CLI or search code here. Modules, one concept each:

- :mod:`~hwsparse.cost.flops`: sparse-aware FLOP count (fvcore, 1 multiply-add = 1 flop).
- :mod:`~hwsparse.cost.dataflow`: one traced forward pass: ops, shapes, live channels.
- :mod:`~hwsparse.cost.memory`: parameters, weight bytes per storage format, peak activations.
- :mod:`~hwsparse.cost.profiles`: the device-profile YAML schema, strict loading, registry.
- :mod:`~hwsparse.cost.latency`: per-op roofline latency with an uncertainty band.
- :mod:`~hwsparse.cost.estimate`: everything at once (:func:`estimate`) and :class:`Budget`.
- :mod:`~hwsparse.cost.calibrate`: micro-benchmarks of this machine -> a profile.
- :mod:`~hwsparse.cost.anchors`: reference networks and the check against published anchors.
"""

from __future__ import annotations

from hwsparse.cost.estimate import Budget, CostReport, LayerCost, estimate
from hwsparse.cost.flops import FlopCount, LayerFlops, count_flops
from hwsparse.cost.profiles import DeviceProfile, list_profiles, load_profile

__all__ = [
    "Budget",
    "CostReport",
    "DeviceProfile",
    "FlopCount",
    "LayerCost",
    "LayerFlops",
    "count_flops",
    "estimate",
    "list_profiles",
    "load_profile",
]
