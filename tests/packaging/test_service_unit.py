"""The GPU box's systemd unit (packaging/earshot-server.service) passes
`systemd-analyze verify`, carries the hardening the install docs promise, and agrees with
`earshot-box` (the admin wrapper) on where the server keeps its state."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

UNIT = REPO / "packaging" / "earshot-server.service"
BOX = REPO / "packaging" / "earshot-box"
needs_systemd = pytest.mark.skipif(not shutil.which("systemd-analyze"),
                                   reason="systemd-analyze missing (dev.py test installs it)")


def settings(text: str) -> list[tuple[str, str]]:
    return [(k.strip(), v.strip()) for k, _, v in
            (line.partition("=") for line in text.splitlines())
            if v and not k.startswith(("#", "["))]


def verify(unit_text: str, folder: Path) -> subprocess.CompletedProcess:
    """`systemd-analyze verify` on the unit with ExecStart pointing at this venv's real
    `earshot-server` (verify checks that the program exists)."""
    server = Path(sys.executable).parent / "earshot-server"
    assert server.is_file()
    path = folder / "earshot-server.service"
    path.write_text(unit_text.replace("/opt/earshot/bin/earshot-server", str(server)))
    return subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True,
                          text=True, timeout=60)


@needs_systemd
def test_unit_passes_systemd_analyze_verify(tmp_path):
    result = verify(UNIT.read_text(), tmp_path)
    # verify exits 0 even for unknown keys: any line about our file is a finding
    assert result.returncode == 0 and "earshot-server.service" not in (
        result.stdout + result.stderr), result.stdout + result.stderr


@needs_systemd
def test_verify_catches_a_broken_unit(tmp_path):
    """The check above can fail: a misspelt hardening key and a bad Restart= are reported."""
    broken = UNIT.read_text().replace("ProtectSystem=strict", "ProtectSystm=strict")
    broken = broken.replace("Restart=on-failure", "Restart=sometimes")
    out = verify(broken, tmp_path)
    text = out.stdout + out.stderr
    assert "ProtectSystm" in text and "sometimes" in text


def test_unit_is_hardened_and_serves_the_lan():
    kv = settings(UNIT.read_text())
    keys = dict(kv)
    for key, value in {"User": "earshot", "StateDirectory": "earshot", "ProtectSystem": "strict",
                       "ProtectHome": "yes", "NoNewPrivileges": "yes", "PrivateTmp": "yes",
                       "Restart": "on-failure", "DevicePolicy": "closed"}.items():
        assert keys.get(key) == value, key
    assert "--host 0.0.0.0" in keys["ExecStart"]
    families = keys["RestrictAddressFamilies"].split()
    assert {"AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK"} <= set(families)
    allowed = [v for k, v in kv if k == "DeviceAllow"]
    assert any("nvidia" in v for v in allowed)
    env = dict(v.split("=", 1) for k, v in kv if k == "Environment")
    assert env["EARSHOT_MODELS_DIR"].startswith("/var/lib/earshot/")


def test_admin_wrapper_uses_the_units_paths():
    env = dict(v.split("=", 1) for k, v in settings(UNIT.read_text()) if k == "Environment")
    box = BOX.read_text()
    for name in ("EARSHOT_MODELS_DIR", "EARSHOT_SERVER_STATE_DIR", "EARSHOT_SERVER_TOKEN_FILE"):
        m = re.search(rf'{name}="\$state/([^"]+)"', box)
        assert m, name
        assert env[name] == f"/var/lib/earshot/{m.group(1)}", name
    assert 'state=${EARSHOT_STATE:-/var/lib/earshot}' in box
    check = subprocess.run(["sh", "-n", str(BOX)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
