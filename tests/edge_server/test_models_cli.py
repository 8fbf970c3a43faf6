"""`earshot-server models list|fetch` works on a box with the `gpu` extra only: no Qt, no
PortAudio, no keyring (which `earshot models` needs through the app's pairing code)."""

from __future__ import annotations

import os
import subprocess
import sys

BLOCKED = ("PySide6", "sounddevice", "shiboken6", "keyring")
HEADLESS = f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split('.')[0] in {BLOCKED!r}:
            raise ImportError(f'{{name}} is not installed on this box')
sys.meta_path.insert(0, Block())
from edge_server.cli import main
sys.exit(main(sys.argv[1:]))
"""


def server(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", HEADLESS, *args], capture_output=True,
                          text=True, timeout=120, env=env)


def test_the_blocker_really_blocks_what_earshot_needs():
    run = subprocess.run([sys.executable, "-c", HEADLESS.replace(
        "from edge_server.cli import main", "from desktop.cli import main"), "models", "list"],
        capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "keyring is not installed" in run.stderr


def test_models_list_and_fetch_without_the_desktop_extra(tmp_path):
    from models.catalog import load_catalog

    run = server("models", "list")
    assert run.returncode == 0, run.stderr
    vad = load_catalog().default_vad
    line = next(x for x in run.stdout.splitlines() if x.startswith(vad))
    assert "installed" in line
    env = dict(os.environ, EARSHOT_MODELS_DIR=str(tmp_path))
    run = server("models", "fetch", "no-such-model", env=env)
    assert run.returncode == 1
    assert run.stderr.startswith("earshot-server: error: unknown model 'no-such-model'")
