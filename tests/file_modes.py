"""File-permission helpers for tests about data at rest (POSIX modes)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777
