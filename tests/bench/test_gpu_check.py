"""bench/gpu_check.py --dry-run: the whole GPU check pipeline on CPU with small sizes, as CI
runs it (real engine, real sherpa-onnx, a real server for the streams step)."""

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.timeout(240)
def test_dry_run_runs_every_step_and_prints_the_table(tmp_path):
    out = tmp_path / "gpu.md"
    proc = subprocess.run(
        [sys.executable, "bench/gpu_check.py", "--dry-run", "--models", "moonshine-tiny-en",
         "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=230, env=os.environ.copy())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = out.read_text()
    assert "Dry run on CPU" in table
    for step in ("environment", "CUDA tests (pytest -m cuda)",
                 "cost model moonshine-tiny-en on cpu", "throughput moonshine-tiny-en on cpu",
                 "streams moonshine-tiny-en on cpu"):
        assert f"| {step} | ok" in table, table
    assert "| moonshine-tiny-en | cpu | sherpa-onnx |" in table
    assert "| moonshine-tiny-en | cpu | earshot b=4 |" in table
    assert "| cpu | 1 |" in table  # one stream through the server


def test_failing_steps_are_reported_and_set_the_exit_status(tmp_path):
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import gpu_check
    finally:
        sys.path.pop(0)
    steps = [gpu_check.Step("environment", True, 0.1, "ok"),
             gpu_check.Step("throughput m on cuda", False, 2.0, "boom")]
    table = gpu_check.markdown(steps, dry=False)
    assert "| throughput m on cuda | FAILED: boom | 2 s |" in table
    assert "Dry run" not in table


def test_a_spent_budget_reports_every_step_as_not_run_and_reports_each_at_once(tmp_path):
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import gpu_check
    finally:
        sys.path.pop(0)
    seen = []
    steps = gpu_check.check(sys.executable, gpu_check.Plan.lease(),
                            ["moonshine-tiny-en", "moonshine-base-en"], tmp_path, dry=False,
                            budget=gpu_check.Budget(0), on_step=lambda s: seen.append(len(s)))
    assert seen == list(range(1, len(steps) + 1))
    names = [s.name for s in steps]
    assert names[:3] == ["environment", "CUDA tests (pytest -m cuda)",
                         "throughput moonshine-tiny-en on cuda"]
    assert "streams moonshine-base-en on cpu" in names
    assert names[-1] == "cost model moonshine-base-en on cuda"  # the lease plan fits last
    assert all(not s.ok and s.detail.startswith("not run") for s in steps)
