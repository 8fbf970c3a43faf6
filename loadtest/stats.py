"""Percentiles of one run and the median and spread of a figure over repeated runs.
Pure; any thread. Empty input gives None (shown as "n/a"), never NaN."""

from __future__ import annotations

import numpy as np


def percentiles(values: list[float]) -> dict[str, float | None]:
    """{"p50", "p95", "p99"} of `values` (linear interpolation), None when empty."""
    if not values:
        return {"p50": None, "p95": None, "p99": None}
    arr = np.asarray(values, dtype=float)
    return {f"p{q}": round(float(np.percentile(arr, q)), 4) for q in (50, 95, 99)}


def spread(values: list[float | None]) -> dict[str, float | int | None]:
    """Median, min, max and interquartile range of a figure over repeats (None values,
    e.g. a repeat with no latency at all, are left out; `n` says how many counted)."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return {"median": None, "min": None, "max": None, "iqr": None, "n": 0}
    arr = np.asarray(vals)
    q1, q3 = np.percentile(arr, [25, 75])
    return {"median": round(float(np.median(arr)), 4), "min": round(float(arr.min()), 4),
            "max": round(float(arr.max()), 4), "iqr": round(float(q3 - q1), 4),
            "n": len(vals)}


def fmt_s(value: float | None) -> str:
    """Seconds as milliseconds for text output ("n/a" for None)."""
    return "n/a" if value is None else f"{value * 1000:.0f} ms"
