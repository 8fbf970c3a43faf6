"""The laptop bundle, built once per test session from the current tree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO


@pytest.fixture(scope="session")
def bundle_build(tmp_path_factory) -> Iterator[Path]:
    """`python dev.py package` (no setup: this venv) into a temporary dist folder; the
    folder holding the `earshot` bundle. Minutes: PyInstaller analyses the whole app."""
    out = tmp_path_factory.mktemp("bundle")
    env = dict(os.environ, EARSHOT_DEV_NO_SETUP="1")
    build = subprocess.run(
        [sys.executable, str(REPO / "dev.py"), "package", "--distpath", str(out / "dist"),
         "--workpath", str(out / "work"), "--no-tar"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=1200)
    shutil.rmtree(out / "work", ignore_errors=True)  # PyInstaller's build files (~100 MB)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    yield out / "dist" / "earshot"
    shutil.rmtree(out, ignore_errors=True)  # ~300 MB; not worth keeping between sessions
