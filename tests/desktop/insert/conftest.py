"""Fixtures for the insertion tests: a stand-in `wtype` (no Wayland compositor exists here)."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest


class FakeWtype:
    """A `wtype` program on PATH that records its arguments, and fails when told to."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.log = folder / "calls.jsonl"
        self.fail = folder / "fail"
        program = folder / "wtype"
        program.write_text(
            f"#!{sys.executable}\n"
            "import json, pathlib, sys\n"
            "here = pathlib.Path(__file__).parent\n"
            "with open(here / 'calls.jsonl', 'a', encoding='utf-8') as fh:\n"
            "    fh.write(json.dumps(sys.argv[1:]) + '\\n')\n"
            "if (here / 'fail').exists():\n"
            "    sys.stderr.write((here / 'fail').read_text())\n"
            "    sys.exit(1)\n", encoding="utf-8")
        program.chmod(program.stat().st_mode | stat.S_IXUSR)

    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def wayland(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A Wayland session without DISPLAY and with an empty PATH folder (so no wtype)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("XDG_SESSION_TYPE", "wayland")
    monkeypatch.setenv("WAYLAND_DISPLAY", "wayland-0")
    monkeypatch.delenv("DISPLAY", raising=False)
    return bin_dir


@pytest.fixture
def fake_wtype(wayland: Path) -> FakeWtype:
    return FakeWtype(wayland)
