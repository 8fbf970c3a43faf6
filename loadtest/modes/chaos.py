"""`chaos`: kill -9 an engine worker every `--kill-every` seconds (default 10) while
`--streams` real-time streams (default 4) run.

Which worker: with `--server local` (started here with `--workers`, default 2 for this
mode) or `--server-pid PID` (a server on this machine), the server's current worker
processes (its psutil descendants that are engine workers: `/healthz` `worker_pids`
when it answers, else every child), in turn; `--worker-pids P,P` kills those (each once,
while alive); `--kill-cmd CMD` runs CMD in a shell instead (a remote box: e.g.
`ssh box pkill -9 -f edge_server.worker -n`). The first kill comes `--kill-every` s
after the streams start; kills stop when the streams end.

Checks: 0 lost and 0 duplicated finals (and no failed stream).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import psutil

from loadtest.context import Context
from loadtest.level import run_level
from loadtest.modes import check
from loadtest.speech import build_scripts
from loadtest.target import Target

DEFAULT_STREAMS = 4
DEFAULT_WORKERS = 2


class Killer:
    """Kills a worker every `every_s` in a daemon thread until stop()."""

    def __init__(self, target: Target, every_s: float, cmd: str | None,
                 pids: list[int] | None) -> None:
        self.target = target
        self.every_s = every_s
        self.cmd = cmd
        self.pids = list(pids or [])
        self.kills: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="loadtest-killer", daemon=True)
        self._turn = 0

    def _candidates(self) -> list[int]:
        if self.pids:
            return [p for p in self.pids if psutil.pid_exists(p)]
        listed = [int(p) for p in self.target.health().get("worker_pids") or []]
        if listed:
            return listed
        pid = self.target.local_pid
        try:
            return [c.pid for c in psutil.Process(pid).children()] if pid else []
        except psutil.Error:
            return []

    def kill_once(self) -> None:
        at = time.monotonic()
        if self.cmd:
            proc = subprocess.run(self.cmd, shell=True, capture_output=True, text=True,
                                  timeout=30)
            self.kills.append({"at": at, "cmd": self.cmd, "rc": proc.returncode})
            return
        pids = sorted(self._candidates())
        if not pids:
            self.kills.append({"at": at, "pid": None, "error": "no worker to kill"})
            return
        pid = pids[self._turn % len(pids)]
        self._turn += 1
        try:
            os.kill(pid, signal.SIGKILL)
            self.kills.append({"at": at, "pid": pid})
        except OSError as exc:
            self.kills.append({"at": at, "pid": pid, "error": str(exc)})

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.kill_once()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(35)


def run(ctx: Context) -> dict:
    a = ctx.args
    n = a.streams or DEFAULT_STREAMS
    if not (ctx.local or a.server_pid or a.kill_cmd or a.worker_pids):
        raise ValueError("chaos against a remote server needs --kill-cmd CMD (or "
                         "--server-pid / --worker-pids for a server on this machine)")
    target = ctx.open(workers=a.workers or DEFAULT_WORKERS)
    pids = [int(p) for p in a.worker_pids.split(",")] if a.worker_pids else None
    killer = Killer(target, a.kill_every, a.kill_cmd, pids)
    try:
        scripts = build_scripts(ctx.clips, n, a.seconds, seed=a.seed)
        ctx.progress.stage(f"chaos {n} streams, kill every {a.kill_every:g} s",
                           sum(s.seconds for s in scripts))
        killer.start()
        try:
            row = run_level(target, scripts, partials=not a.no_partials, stagger_s=a.stagger,
                            wer_bound=a.wer_bound, progress=ctx.progress.update)
        finally:
            killer.stop()
        health = target.health()
    finally:
        ctx.close(target)
    done = [k for k in killer.kills if not k.get("error") and k.get("rc", 0) == 0]
    row["kills"] = len(done)
    row["kill_errors"] = [k.get("error") or f"rc {k.get('rc')}" for k in killer.kills
                          if k not in done]
    row["worker_restarts"] = health.get("worker_restarts")
    checks = [
        check("workers were killed", len(done) > 0,
              f"{len(done)} kill -9 every {a.kill_every:g} s; server counted "
              f"{row['worker_restarts']} restarts"),
        check("0 lost, 0 duplicated finals",
              row["lost"] == 0 and row["duplicated"] == 0 and row["failed"] == 0
              and row["admitted"] == n,
              f"{row['segments_expected']} segments: {row['lost']} lost, "
              f"{row['duplicated']} duplicated, {row['decode_failed']} decode_failed, "
              f"{row['failed']} failed streams, {row['over_wer']} over the WER bound"),
    ]
    return {"mode": "chaos", "kill_every_s": a.kill_every, "levels": [row], "checks": checks}
