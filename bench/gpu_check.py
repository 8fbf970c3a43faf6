"""The GPU check: CUDA tests, GPU cost model, engine and streams benchmarks vs the CPU path.

    python bench/gpu_check.py [--python PY | --venv DIR [--wheels DIR]] [--models A,B]
        [--out report.md]
    python bench/gpu_check.py --dry-run          # the same pipeline on CPU, small sizes (CI)
    python bench/gpu_check.py --plan lease --budget-s 420 --out gpu.md
                                                 # sized for a short GPU loan (see below)

On a machine with an NVIDIA GPU, in one run:
1. environment: onnxruntime flavour and providers, `nvidia-smi -L`;
2. the CUDA tests: `pytest -m cuda tests/edge_server/engine` (skipped where CUDA is absent);
3. per model: the decoder step cost model fitted on CUDA
   (`python -m bench.engine_throughput --fit --device cuda`), to paste into
   edge_server/engine/costmodel.py `COSTS`;
4. per model: WER and real-time factor, one by one and batched, on CUDA and on CPU, with
   sherpa-onnx (CPU) as the reference in each (`bench.engine_throughput`);
5. concurrent real-time streams through the server, device cuda vs cpu (`bench.streams
   sweep`);
and prints one markdown table for docs/benchmarks.md ("GPU" section).

`--plan full` (default) runs every step at full size; `--plan lease` fits a lent GPU
machine held for minutes: the most telling steps first (CUDA tests, throughput on CUDA with
sherpa-onnx on CPU as the reference, streams of the office model on CUDA vs CPU), fewer
repetitions, and the cost model fits last. `--budget-s` caps the whole check: each step's
timeout is cut to the time left, and steps with no time left are reported as not run. With
`--out`, the table is rewritten after every step, so a check cut short still leaves its
figures.

onnxruntime-gpu and onnxruntime cannot share an environment: `--python` names an
interpreter that has `earshot[gpu,test]` installed; `--venv DIR` creates one (pip, from
`--wheels DIR` when the machine is offline). Steps run as subprocesses of that interpreter;
a failing step is reported in the table and the check goes on. Exit status: 0 when every
step passed (skips count as passed in --dry-run only).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Step:
    name: str
    ok: bool
    seconds: float
    detail: str = ""
    data: dict = field(default_factory=dict)


@dataclass
class Plan:
    """Sizes and devices of one run (full on a GPU, small on CPU for --dry-run)."""

    devices: tuple[str, ...]  # engine throughput runs on each
    fit_device: str
    fit_rows: str
    fit_seconds: str
    utterances: int
    reps: int
    batches: str
    streams: str
    stream_seconds: float
    sentences: int  # dev sentences scored for WER (18: all)
    stream_devices: tuple[str, ...] = ()  # () = `devices`
    stream_model: str | None = None  # None = the first model asked for
    fits_last: bool = False
    model_utterances: dict[str, int] = field(default_factory=dict)  # per-model override

    @classmethod
    def full(cls) -> Plan:
        return cls(("cuda", "cpu"), "cuda", "1,2,4,8,16,32,64", "1,4,10,20", 96, 5,
                   "1,16,64", "8,16,32,64", 45.0, 18)

    @classmethod
    def lease(cls) -> Plan:
        """About 6 minutes on one GPU: base's sherpa-onnx reference (int8 as shipped, about
        3.4x real time per core) gets 18 clips, each sentence once."""
        return cls(("cuda",), "cuda", "1,8,32,64", "2,10", 48, 3, "1,16,48", "16,64", 20.0,
                   18, stream_devices=("cuda", "cpu"), stream_model="moonshine-base-en",
                   fits_last=True, model_utterances={"moonshine-base-en": 18})

    @classmethod
    def dry(cls) -> Plan:
        return cls(("cpu",), "cpu", "1,2", "1,2", 4, 1, "1,4", "1", 3.0, 4)


def make_venv(venv: Path, wheels: Path | None) -> Path:
    """A venv with earshot[gpu,test] (editable); returns its python."""
    py = venv / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(py), "-m", "pip", "install", "-q"]
        if wheels:
            pip += ["--no-index", "--find-links", str(wheels)]
        subprocess.run([*pip, "-e", f"{REPO}[gpu,test]"], check=True)
    return py


def run(cmd: list[str], timeout: float, env: dict | None = None) -> tuple[int, str, float]:
    """Run a step; (exit status, combined output, seconds). Timeouts give status 124."""
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})})
        rc, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc = 124
        out = f"{exc.stdout or ''}{exc.stderr or ''}\n[timed out after {timeout:.0f} s]"
    except FileNotFoundError as exc:  # e.g. no nvidia-smi on this machine
        rc, out = 127, f"{cmd[0]}: not found ({exc.strerror})"
    return rc, out, time.perf_counter() - start


ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def tail(text: str, lines: int = 3) -> str:
    """The last `lines` lines of a step's output, on one line, without terminal colours."""
    text = ANSI_ESCAPE.sub("", text)
    return " / ".join(line.strip() for line in text.strip().splitlines()[-lines:])


class Budget:
    """Seconds left for the whole check; `timeout(t)` cuts a step's own limit to it."""

    def __init__(self, seconds: float | None) -> None:
        self.end = None if seconds is None else time.monotonic() + seconds

    def timeout(self, step_limit: float) -> float:
        if self.end is None:
            return step_limit
        return min(step_limit, self.end - time.monotonic())


def check(py: str, plan: Plan, models: list[str], workdir: Path, dry: bool,
          budget: Budget | None = None,
          on_step: Callable[[list[Step]], None] | None = None) -> list[Step]:
    """Run the steps in order; `on_step(steps so far)` after each one."""
    budget = budget or Budget(None)
    steps: list[Step] = []

    def step(name: str, limit: float, body: Callable[[float], Step]) -> None:
        left = budget.timeout(limit)
        steps.append(body(left) if left >= 10 else
                     Step(name, False, 0.0, "not run: the time budget was spent"))
        if on_step is not None:
            on_step(steps)

    def environment(limit: float) -> Step:
        probe = ("import json, onnxruntime as o; print(json.dumps({'version': o.__version__, "
                 "'providers': o.get_available_providers()}))")
        rc, out, t = run([py, "-c", probe], min(limit, 120))
        data = json.loads(out.strip().splitlines()[-1]) if rc == 0 else {}
        gpus = run(["nvidia-smi", "-L"], 30)[1].strip() if not dry else "(dry run: not asked)"
        return Step("environment", rc == 0, t, f"{data}; {gpus}"[:300], data)

    def cuda_tests(limit: float) -> Step:
        rc, out, t = run([py, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
                          "tests/edge_server/engine"], limit)
        ok = rc == 0 or (rc == 5 and dry)  # 5: nothing collected/selected
        return Step("CUDA tests (pytest -m cuda)", ok, t, tail(out, 1))

    def fit(model: str) -> Callable[[float], Step]:
        def body(limit: float) -> Step:
            out_json = workdir / f"fit-{model}.json"
            rc, out, t = run([py, "-m", "bench.engine_throughput", "--fit", "--model", model,
                              "--device", plan.fit_device, "--fit-rows", plan.fit_rows,
                              "--fit-seconds", plan.fit_seconds, "--json", str(out_json)],
                             limit)
            data = json.loads(out_json.read_text()) if rc == 0 and out_json.exists() else {}
            fitted = [line for line in out.splitlines() if "StepCost(" in line]
            return Step(f"cost model {model} on {plan.fit_device}", rc == 0, t,
                        fitted[-1].strip() if fitted else tail(out, 1), data)
        return body

    def throughput(model: str, device: str) -> Callable[[float], Step]:
        def body(limit: float) -> Step:
            out_json = workdir / f"thr-{model}-{device}.json"
            utterances = plan.model_utterances.get(model, plan.utterances)
            rc, out, t = run([py, "-m", "bench.engine_throughput", "--model", model,
                              "--device", device, "--utterances", str(utterances),
                              "--reps", str(plan.reps), "--batches", plan.batches,
                              "--sentences", str(plan.sentences),
                              "--json", str(out_json)], limit)
            data = json.loads(out_json.read_text()) if rc == 0 and out_json.exists() else {}
            return Step(f"throughput {model} on {device}", rc == 0, t,
                        "" if rc == 0 else tail(out), data)
        return body

    def streams(model: str, device: str) -> Callable[[float], Step]:
        def body(limit: float) -> Step:
            config = workdir / f"server-{device}.toml"
            config.write_text(f'device = "{device}"\nmodel = "{model}"\n')
            out_json = workdir / f"streams-{device}.json"
            rc, out, t = run([py, "-m", "bench.streams", "sweep", "--streams", plan.streams,
                              "--seconds", str(plan.stream_seconds), "--server-config",
                              str(config), "--json", str(out_json)], limit)
            data = {"rows": json.loads(out_json.read_text())} \
                if rc == 0 and out_json.exists() else {}
            return Step(f"streams {model} on {device}", rc == 0, t,
                        "" if rc == 0 else tail(out), data)
        return body

    step("environment", 120, environment)
    step("CUDA tests (pytest -m cuda)", 900, cuda_tests)
    fits = [(f"cost model {m} on {plan.fit_device}", 1200, fit(m)) for m in models]
    if not plan.fits_last:
        for args in fits:
            step(*args)
    for model in models:
        for device in plan.devices:
            step(f"throughput {model} on {device}", 1800, throughput(model, device))
    stream_model = plan.stream_model if plan.stream_model in models else models[0]
    for device in plan.stream_devices or plan.devices:
        step(f"streams {stream_model} on {device}", 3600, streams(stream_model, device))
    if plan.fits_last:
        for args in fits:
            step(*args)
    return steps


def markdown(steps: list[Step], dry: bool) -> str:
    """The table(s) for docs/benchmarks.md."""
    lines = []
    if dry:
        lines.append("_Dry run on CPU with small sizes: checks the pipeline, not a GPU figure._")
        lines.append("")
    lines += ["| step | result | time |", "|---|---|---|"]
    for s in steps:
        lines.append(f"| {s.name} | {'ok' if s.ok else 'FAILED'}: {s.detail} | "
                     f"{s.seconds:.0f} s |")
    thr = [s for s in steps if s.name.startswith("throughput") and s.data]
    if thr:
        lines += ["", "| model | device | decoder | WER | RTF (min-max) | vs sherpa-onnx (CPU) |",
                  "|---|---|---|---|---|---|"]
        for s in thr:
            _, model, _, device = s.name.split()
            for name, r in s.data["results"].items():
                ratio = f"{r['ratio']:.2f}x" if r.get("ratio") else "-"
                lines.append(f"| {model} | {device} | {name} | {100 * r['wer']:.1f}% | "
                             f"{r['rtf']:.4f} ({r['rtf_min']:.4f}-{r['rtf_max']:.4f}) | "
                             f"{ratio} |")
    fits = [s for s in steps if s.name.startswith("cost model") and s.data]
    if fits:
        lines += ["", "| model | device | fixed ms | per row ms | per row per frame ms |",
                  "|---|---|---|---|---|"]
        for s in fits:
            c = s.data["cost"]
            lines.append(f"| {s.data['model']} | {s.data['device']} | {c['fixed_ms']} | "
                         f"{c['row_ms']} | {c['row_frame_ms']} |")
    streams = [s for s in steps if s.name.startswith("streams") and s.data]
    if streams:
        lines += ["", "| device | streams | p50 final latency | p95 | failed |",
                  "|---|---|---|---|---|"]
        for s in streams:
            device = s.name.split()[-1]
            for row in s.data["rows"]:
                lines.append(f"| {device} | {row.get('streams')} | "
                             f"{row.get('p50_latency_s', float('nan')) * 1000:.0f} ms | "
                             f"{row.get('p95_latency_s', float('nan')) * 1000:.0f} ms | "
                             f"{row.get('failed')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU only, small sizes (CI)")
    ap.add_argument("--python", help="interpreter with earshot[gpu,test] installed")
    ap.add_argument("--venv", type=Path, help="create/use this venv with earshot[gpu,test]")
    ap.add_argument("--wheels", type=Path, help="offline wheel folder for --venv")
    ap.add_argument("--plan", choices=("full", "lease"), default="full",
                    help="step sizes: full, or lease (a GPU lent for minutes)")
    ap.add_argument("--budget-s", type=float, help="cap on the whole check, in seconds")
    ap.add_argument("--models", default="moonshine-tiny-en,moonshine-base-en")
    ap.add_argument("--out", type=Path, help="also write the markdown here")
    args = ap.parse_args(argv)
    if args.python:
        py = args.python
    elif args.venv:
        py = str(make_venv(args.venv, args.wheels))
    else:
        py = sys.executable
    plan = Plan.dry() if args.dry_run else Plan.lease() if args.plan == "lease" \
        else Plan.full()
    models = [m for m in args.models.split(",") if m]

    def progress(steps: list[Step]) -> None:
        s = steps[-1]
        print(f"[gpu_check] {s.name}: {'ok' if s.ok else 'FAILED'} in {s.seconds:.0f} s "
              f"{s.detail}"[:400], flush=True)
        if args.out:
            args.out.write_text(markdown(steps, args.dry_run))

    with tempfile.TemporaryDirectory(prefix="earshot-gpu-check-") as tmp:
        steps = check(py, plan, models, Path(tmp), args.dry_run, Budget(args.budget_s),
                      progress)
    table = markdown(steps, args.dry_run)
    print(table)
    if args.out:
        args.out.write_text(table)
    return 0 if all(s.ok for s in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
