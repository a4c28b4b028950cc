"""CLI commands of the hardware cost model: devices, estimate, calibrate."""

from __future__ import annotations
