"""Hardware cost model: FLOPs, memory and latency of a (masked) network on a device profile.

Plain PyTorch; no CLI or search code here. Modules, one concept each:

- :mod:`hwsparse.cost.flops`: sparse-aware FLOP count (fvcore, 1 multiply-add = 1 flop).
"""

from __future__ import annotations

from hwsparse.cost.flops import FlopCount, LayerFlops, count_flops

__all__ = ["FlopCount", "LayerFlops", "count_flops"]
