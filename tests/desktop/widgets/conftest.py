"""Fixtures for the widget tests: a real History in tmp_path and the screenshot folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from desktop.history import History

REPO = Path(__file__).resolve().parents[3]
ARTIFACTS = REPO / "test-artifacts"


@pytest.fixture
def hist(tmp_path: Path) -> Iterator[History]:
    with History(tmp_path / "history.db") as h:
        yield h


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
