"""`earshot loadtest failover` through the installed command on default settings
(`--server local`): app-style clients, the server stopped mid-run, a local fallback."""

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

EARSHOT = Path(sys.executable).parent / "earshot"


def test_the_installed_command_runs_failover_with_a_local_server(tmp_path, short_tsv):
    out, png = tmp_path / "fo.json", tmp_path / "fo.png"
    proc = subprocess.run(
        [str(EARSHOT), "loadtest", "failover", "--streams", "2", "--seconds", "5",
         "--stop-after", "2.5", "--audio", str(short_tsv), "--json", str(out),
         "--plot", str(png)],
        cwd=REPO, capture_output=True, text=True, timeout=120, env=os.environ.copy())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    (row,) = doc["levels"]
    assert doc["passed"] and doc["settings"]["server"] == "local"
    assert row["stopped"]["how"] == "signal SIGTERM"
    assert all("fallback" in c["endpoints"] for c in row["clients"]), row["clients"]
    assert row["lost"] == 0 and row["duplicated"] == 0 and row["words_lost_to_failover"] == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "PASS  every client's transcript holds every reference word" in proc.stdout
