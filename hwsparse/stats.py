"""Uncertainty of an accuracy measured on a finite split.

Convention (stated once here, referenced elsewhere): an accuracy ``p`` measured on ``n``
samples is a binomial proportion; its interval is the **95 % Wilson score interval**
(Wilson 1927; Brown, Cai & DasGupta 2001 recommend it over the normal approximation, which
collapses to a point at p = 0 or 1 and undercovers at small n). It describes sampling noise of
the split only: how far the accuracy on another split of the same size from the same
distribution may differ; not seed-to-seed training noise, and not the bias of picking the best
of many trials on the same split.
"""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # two-sided 95 % normal quantile


def wilson_interval(p: float, n: int, z: float = Z95) -> tuple[float, float]:
    """95 % Wilson score interval ``(low, high)`` of a proportion ``p`` (0-1) seen on ``n``
    samples. Raises ValueError for ``n < 1`` or ``p`` outside [0, 1]."""
    if n < 1:
        raise ValueError(f"n must be >= 1 (got {n})")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1] (got {p})")
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def interval_or_none(p: float | None, n: int | None) -> list[float] | None:
    """:func:`wilson_interval` as a JSON-ready ``[low, high]``, or None when ``p`` or ``n`` is
    unknown (studies made before the split sizes were stored)."""
    if p is None or n is None or n < 1 or not math.isfinite(p):
        return None
    return list(wilson_interval(p, n))
