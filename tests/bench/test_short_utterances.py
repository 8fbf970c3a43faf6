"""bench/short_utterances.py on the committed card-name commands (short clips), tiny only:
every rule runs, the JSON holds each cell, and the engine left as it was afterwards."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import DEV, REPO


@pytest.mark.timeout(300)
def test_sweep_runs_every_rule_and_restores_the_engine(tmp_path):
    out = tmp_path / "sweep.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.short_utterances", "--dev", str(DEV),
         "--set", "pocketsphinx-testdata", "--model", "moonshine-tiny-en", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=290, env=os.environ.copy())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 2 * 13
    assert all(isinstance(r["moonshine-tiny-en"], int) for r in rows)
    ours = next(r for r in rows
                if r["padding"] == "to 2 s at the end" and r["first_token_never_eos"])
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("| the engine as it is") and last.endswith(
        f"| {ours['moonshine-tiny-en']} |"), last
