"""Small text formatters shared by the widgets. Pure functions, any thread."""

from __future__ import annotations

import math
from datetime import datetime


def clock(seconds: float) -> str:
    """`seconds` as "m:ss" (minutes are not wrapped into hours: 75:03); negatives clamp to 0."""
    total = int(seconds) if math.isfinite(seconds) and seconds > 0 else 0
    minutes, secs = divmod(total, 60)
    return f"{minutes}:{secs:02d}"


def duration(seconds: float) -> str:
    """A length for people: "0:42", "12:05", "1:02:03"."""
    total = round(seconds) if math.isfinite(seconds) and seconds > 0 else 0
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def local_time(moment: datetime) -> str:
    """A timezone-aware moment as local "YYYY-MM-DD HH:MM"."""
    return f"{moment.astimezone():%Y-%m-%d %H:%M}"
