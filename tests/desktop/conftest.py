"""Fixtures shared by the desktop tests."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def umask_022():
    """The usual umask, under which a file created without an explicit mode is 0644."""
    old = os.umask(0o022)
    yield
    os.umask(old)
