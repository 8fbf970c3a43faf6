"""The Redis queue's cost and its recovery, on one machine, in one run.

    python -m bench.queue_overhead [--streams 4] [--seconds 20] [--workers 2] [--threads 1]
                                   [--model moonshine-tiny-en] [--kill-every 4] [--json PATH]

Runs the same real-time streams (`earshot loadtest sweep --levels N --repeats 1`, partials
on, dev speech) against:
1. `inproc`: `earshot-server --workers W` (the embedded pool);
2. `redis-W`: a `redis-server` (no persistence), W `earshot-worker` processes and
   `earshot-server --queue` (same model, threads, batch);
3. `redis-1`: the same with one worker;
4. `redis-W-chaos`: case 2 while a worker is SIGKILLed every `--kill-every` s
   (`loadtest chaos --kill-cmd`; a supervisor here restarts it, as systemd would).
It prints one row per case: p50/p95 final latency (endpoint due -> final), lost and
duplicated finals, WER, throughput; for chaos also the kills and, for each task taken over
from a killed worker, how long it had been queued when another worker claimed it
(XAUTOCLAIM; the workers' "claimed task ... queued Xs ago" lines).
Needs redis-server on PATH. Never imports tests/.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.models_env import default_models_dir
from loadtest.local_server import LocalServer

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Redis:
    def __init__(self) -> None:
        self.port = free_port()
        self.folder = tempfile.mkdtemp(prefix="bench-redis-")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.folder], stdout=subprocess.DEVNULL)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.folder, ignore_errors=True)


class Workers:
    """`count` earshot-worker processes, each restarted when it exits (like systemd);
    their PIDs in `pidfile` (for the chaos kill command), their logs kept."""

    def __init__(self, url: str, count: int, args: list[str], env: dict) -> None:
        self.url, self.args, self.env = url, args, env
        self.pidfile = Path(tempfile.mkstemp(prefix="bench-workers-")[1])
        self.procs: list[subprocess.Popen | None] = [None] * count
        self.logs: list[tuple[float, str]] = []  # (time, line) of every worker
        self.kills: list[tuple[float, int]] = []  # (time, pid) of deaths seen
        self.stopping = False
        self._threads = [threading.Thread(target=self._keep, args=(i,), daemon=True)
                         for i in range(count)]
        for t in self._threads:
            t.start()

    def _keep(self, index: int) -> None:
        while not self.stopping:
            proc = subprocess.Popen(
                [sys.executable, "-m", "edge_server.queue.worker_cli", "--queue", self.url,
                 *self.args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                env=self.env)
            self.procs[index] = proc
            self._write_pids()
            for line in proc.stdout:
                self.logs.append((time.monotonic(), line))
            code = proc.wait()
            if code < 0 and not self.stopping:
                self.kills.append((time.monotonic(), proc.pid))

    def _write_pids(self) -> None:
        pids = [str(p.pid) for p in self.procs if p is not None and p.poll() is None]
        self.pidfile.write_text("\n".join(pids) + "\n")

    def wait_ready(self, timeout: float = 120) -> None:
        end = time.monotonic() + timeout
        while sum("earshot-worker ready" in ln for _, ln in self.logs) < len(self.procs):
            if time.monotonic() > end:
                raise RuntimeError("workers never ready: " + "".join(ln for _, ln in self.logs))
            time.sleep(0.1)

    def stop(self) -> None:
        self.stopping = True
        for p in self.procs:
            if p is not None and p.poll() is None:
                p.terminate()
        for p in self.procs:
            if p is not None:
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
        self.pidfile.unlink(missing_ok=True)

    def claim_ages(self) -> list[float]:
        """Per task claimed from a killed worker: seconds since the gateway queued it (the
        row's total delay before another worker took it over)."""
        return [round(float(m.group(1)), 2) for _, ln in self.logs
                if (m := re.search(r"claimed task .* queued ([0-9.]+)s ago", ln))]


def loadtest(url: str, mode: str, a: argparse.Namespace, env: dict, out: Path,
             extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "loadtest", mode, "--server", url, "--streams",
           str(a.streams), "--seconds", str(a.seconds), "--json", str(out), "--no-progress",
           *extra]
    if mode == "sweep":
        cmd += ["--levels", str(a.streams), "--repeats", "1"]
    subprocess.run(cmd, env=env, check=False, stdout=subprocess.DEVNULL)
    doc = json.loads(out.read_text())
    row = dict(doc["levels"][0])
    row["checks_failed"] = [c["name"] for c in doc.get("checks", []) if not c.get("ok")]
    return row


KEYS = ("streams", "segments_expected", "lost", "duplicated", "p50_final_s", "p95_final_s",
        "p99_final_s", "wer", "throughput_x", "refused_503")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--streams", type=int, default=4)
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--model", default="moonshine-tiny-en")
    p.add_argument("--kill-every", type=float, default=4.0)
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               EARSHOT_MODELS_DIR=os.environ.get("EARSHOT_MODELS_DIR") or
               str(default_models_dir()))
    tmp = Path(tempfile.mkdtemp(prefix="bench-queue-"))
    results: dict[str, dict] = {}
    common = ["--model", a.model, "--threads", str(a.threads)]
    worker_args = [*common, "--device", "cpu", "--batch", str(a.batch)]

    server = LocalServer([*common, "--workers", str(a.workers), "--device", "cpu",
                          "--max-batch", str(a.batch)], env=env).start()
    try:
        results["inproc"] = loadtest(server.url, "sweep", a, env, tmp / "inproc.json", [])
    finally:
        server.stop()
    for count, chaos in ((a.workers, False), (1, False), (a.workers, True)):
        redis = Redis()
        workers = Workers(redis.url, count, worker_args, env)
        server = None
        try:
            workers.wait_ready()
            server = LocalServer([*common, "--queue", redis.url, "--max-batch", str(a.batch)],
                                 env=env).start()
            url = server.url
            name = f"redis-{count}" + ("-chaos" if chaos else "")
            if chaos:
                kill = f"kill -9 $(shuf -n1 {workers.pidfile})"
                row = loadtest(url, "chaos", a, env, tmp / f"{name}.json",
                               ["--kill-every", str(a.kill_every), "--kill-cmd", kill])
                row["kills"] = len(workers.kills)
                row["claimed_task_age_s"] = workers.claim_ages()
            else:
                row = loadtest(url, "sweep", a, env, tmp / f"{name}.json", [])
            results[name] = row
        finally:
            if server is not None:
                server.stop()
            workers.stop()
            redis.stop()
    print(f"{'case':<16}" + "".join(f"{k:>18}" for k in KEYS))
    for name, row in results.items():
        print(f"{name:<16}" + "".join(f"{row.get(k)!s:>18}" for k in KEYS))
        if "kills" in row:
            print(f"{'':<16}kills {row['kills']}; tasks taken over from killed workers, "
                  f"seconds since queued: {row['claimed_task_age_s']}")
    if a.json:
        a.json.write_text(json.dumps({"settings": vars(a) | {"json": str(a.json)},
                                      "results": results}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
