"""packaging/earshot-worker.service passes `systemd-analyze verify`, runs the real
`earshot-worker`, keeps the Redis password in an environment file, and restarts always."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

UNIT = REPO / "packaging" / "earshot-worker.service"


@pytest.mark.skipif(not shutil.which("systemd-analyze"),
                    reason="systemd-analyze missing (dev.py test installs it)")
def test_worker_unit_passes_systemd_analyze_verify(tmp_path):
    worker = Path(sys.executable).parent / "earshot-worker"
    assert worker.is_file()  # the console script pyproject.toml declares
    path = tmp_path / "earshot-worker.service"
    path.write_text(UNIT.read_text().replace("/opt/earshot/bin/earshot-worker", str(worker)))
    out = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_worker_unit_keeps_the_queue_url_off_the_command_line():
    text = UNIT.read_text()
    exec_start = next(ln for ln in text.splitlines() if ln.startswith("ExecStart="))
    assert "--queue" not in exec_start and "EnvironmentFile=/etc/earshot/worker.env" in text
    assert "Restart=always" in text and "NoNewPrivileges=yes" in text
