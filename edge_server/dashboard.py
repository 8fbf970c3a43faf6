"""Live operations page of one edge server: `GET /dashboard` and `GET /api/stats`.

`/dashboard` serves `static/dashboard.html`, a self-contained page (no build step, no
external assets) whose inline script polls `/api/stats` every second. `/api/stats` returns
`build_snapshot(...)`: status, sessions, queue, workers, recent batch sizes, real-time
factor, final latency, totals, CPU/memory of the server and its worker processes, and GPU
memory (null without `nvidia-smi`). Both are read-only operational data, never transcript
text or tokens, so they are open without the server's token (like `/healthz`, `/metrics`).

`build_snapshot` is pure: it reads the server's state and takes the resource samples as
arguments. `ResourceSampler` (psutil, a few /proc reads) runs on the event loop;
`GpuProbe` runs `nvidia-smi` in a thread, at most every 2 s, and the endpoint never fails
or waits long because of it. Event loop thread only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import psutil
from aiohttp import web

if TYPE_CHECKING:
    from edge_server.app import EdgeServer

log = logging.getLogger(__name__)

PAGE = Path(__file__).parent / "static" / "dashboard.html"
NO_STORE = {"Cache-Control": "no-store"}
PAGE_HEADERS = {
    **NO_STORE,
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": ("default-src 'none'; script-src 'unsafe-inline'; "
                                "style-src 'unsafe-inline'; connect-src 'self'; img-src data:"),
}
BATCH_BUCKETS: tuple[tuple[str, int, int], ...] = (
    ("1", 1, 1), ("2-3", 2, 3), ("4-7", 4, 7), ("8-15", 8, 15), ("16+", 16, 1 << 30))
NVIDIA_SMI = ("nvidia-smi", "--query-gpu=name,memory.used,memory.total",
              "--format=csv,noheader,nounits")


# ---- pure parts ---------------------------------------------------------------------------
def server_status(server: EdgeServer) -> str:
    """starting / ready / draining / failed, as `/healthz` reports it."""
    if server.draining:
        return "draining"
    if server.pool.serving:
        return "ready"
    return "failed" if server.startup_error or server.pool.failed else "starting"


def batch_histogram(sizes: Iterable[int]) -> dict[str, Any]:
    """Counts of recent batch sizes per bucket (1, 2-3, 4-7, 8-15, 16+) and their mean."""
    arr = np.fromiter(sizes, dtype=np.int64)
    buckets = [{"bucket": name, "count": int(((arr >= lo) & (arr <= hi)).sum())}
               for name, lo, hi in BATCH_BUCKETS]
    mean = round(float(arr.mean()), 2) if arr.size else None
    return {"batches": int(arr.size), "mean": mean, "buckets": buckets}


def latency_percentiles(latencies: Iterable[float]) -> dict[str, Any]:
    """p50/p95 (seconds) of the recent finals' latency; null when none were decoded."""
    arr = np.fromiter(latencies, dtype=np.float64)
    if not arr.size:
        return {"p50_s": None, "p95_s": None, "count": 0}
    p50, p95 = np.percentile(arr, [50, 95])
    return {"p50_s": round(float(p50), 4), "p95_s": round(float(p95), 4), "count": int(arr.size)}


def build_snapshot(server: EdgeServer, resources: dict[str, Any],
                   gpus: list[dict[str, Any]] | None) -> dict[str, Any]:
    """The `/api/stats` body: the server's state now, plus the given resource samples."""
    sched, pool, info = server.scheduler, server.pool, server.pool.info
    return {
        "status": server_status(server),
        "server": {"id": server.server_id, "name": server.advertised_name,
                   "model": server.model_id, "models": list(server.models),
                   "device": info.get("device"),
                   "provider": info.get("provider"), "error": server.startup_error},
        "uptime_s": round(time.monotonic() - server.started, 1),
        "time": time.time(),
        "sessions": {"active": server.registry.active},
        "queue": {"depth": sched.queue_depth, "finals": len(sched.finals),
                  "partials": len(sched.partials), "clips": len(sched.clips),
                  "oldest_final_wait_s": round(sched.oldest_final_wait(), 3)},
        "workers": {"configured": pool.config.workers, "ready": pool.ready_count,
                    "busy": pool.ready_count - pool.idle_count, "idle": pool.idle_count,
                    "restarts": pool.restart_count, "pids": pool.pids(),
                    "live": pool.size,  # with --queue: live workers on every machine
                    "remote": [{k: w.get(k) for k in ("id", "host", "model", "device", "batch",
                                                      "speed")}
                               for w in (pool.queue_stats()["workers"]
                                         if hasattr(pool, "queue_stats") else [])]},
        "batch_sizes": batch_histogram(sched.stats.batch_sizes),
        "model_batches": {m: sched.stats.model_batches.get(m, 0) for m in server.models},
        "realtime_factor": round(server.metrics.realtime_factor(), 4),
        "final_latency": latency_percentiles(sched.stats.final_latency),
        "totals": {"batches": sched.stats.batches, "finals": sched.stats.finals,
                   "partials": sched.stats.partials,
                   "partials_dropped": sched.stats.partials_dropped,
                   "decode_failures": sched.stats.failed,
                   "clips_done": server.clips.done, "clips_active": server.clips.active,
                   "sessions_started": server.stats["sessions_started"],
                   "sessions_rejected": server.stats["sessions_rejected"]},
        "resources": resources,
        "gpu": gpus,
    }


def parse_nvidia_smi(output: str) -> list[dict[str, Any]]:
    """`name, used, total` lines (MiB) into one dict per GPU."""
    gpus = []
    for index, line in enumerate(ln for ln in output.splitlines() if ln.strip()):
        name, used, total = (part.strip() for part in line.rsplit(",", 2))
        gpus.append({"index": index, "name": name, "memory_used_mib": float(used),
                     "memory_total_mib": float(total)})
    return gpus


# ---- samplers -----------------------------------------------------------------------------
class ResourceSampler:
    """CPU and RSS of the server and its workers, and of the system, since the last call.

    `psutil.Process` objects are cached per pid, so `cpu_percent(interval=None)` measures
    the time since the previous sample (the first sample of a process reads 0).
    """

    def __init__(self) -> None:
        self._procs: dict[int, psutil.Process] = {}
        psutil.cpu_percent(interval=None)  # prime the system-wide counter

    def _process(self, pid: int) -> psutil.Process | None:
        proc = self._procs.get(pid)
        if proc is None:
            with contextlib.suppress(psutil.Error):
                proc = self._procs[pid] = psutil.Process(pid)
                proc.cpu_percent(interval=None)
        return proc

    def sample(self, worker_pids: list[int]) -> dict[str, Any]:
        roles = [(os.getpid(), "server")] + [(pid, "worker") for pid in worker_pids]
        wanted = {pid for pid, _ in roles}
        self._procs = {pid: p for pid, p in self._procs.items() if pid in wanted}
        processes = []
        for pid, role in roles:
            proc = self._process(pid)
            if proc is None:
                continue
            try:
                with proc.oneshot():
                    cpu, rss = proc.cpu_percent(interval=None), proc.memory_info().rss
            except psutil.Error:
                self._procs.pop(pid, None)
                continue
            processes.append({"pid": pid, "role": role, "cpu_percent": round(cpu, 1),
                              "rss_bytes": rss})
        vm = psutil.virtual_memory()
        return {
            "cpu_percent": round(sum(p["cpu_percent"] for p in processes), 1),
            "rss_bytes": sum(p["rss_bytes"] for p in processes),
            "processes": processes,
            "system": {"cpu_percent": psutil.cpu_percent(interval=None),
                       "cpus": psutil.cpu_count() or 1,
                       "memory_used_bytes": vm.total - vm.available,
                       "memory_total_bytes": vm.total},
        }


class GpuProbe:
    """GPU memory via `nvidia-smi`, cached for `ttl_s`; None when there is none (or it fails).

    A stale value is returned at once while a refresh runs in the background; only the very
    first read waits (at most `timeout_s`).
    """

    def __init__(self, ttl_s: float = 2.0, timeout_s: float = 3.0) -> None:
        self.available = shutil.which(NVIDIA_SMI[0]) is not None
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self._value: list[dict[str, Any]] | None = None
        self._read_at: float | None = None
        self._refresh: asyncio.Task | None = None

    async def read(self) -> list[dict[str, Any]] | None:
        if not self.available:
            return None
        fresh = self._read_at is not None and time.monotonic() - self._read_at < self.ttl_s
        if not fresh and (self._refresh is None or self._refresh.done()):
            self._refresh = asyncio.get_running_loop().create_task(self._update())
        if self._read_at is None and self._refresh is not None:
            await asyncio.wait({self._refresh}, timeout=self.timeout_s)
        return self._value

    async def close(self) -> None:
        if self._refresh is not None and not self._refresh.done():
            self._refresh.cancel()
            await asyncio.gather(self._refresh, return_exceptions=True)

    async def _update(self) -> None:
        try:
            out = await asyncio.to_thread(
                subprocess.run, NVIDIA_SMI, capture_output=True, text=True, check=True,
                timeout=self.timeout_s)
            self._value = parse_nvidia_smi(out.stdout) or None
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            log.debug("nvidia-smi failed: %s", exc)
            self._value = None
        self._read_at = time.monotonic()


# ---- routes -------------------------------------------------------------------------------
class Dashboard:
    def __init__(self, server: EdgeServer) -> None:
        self.server = server
        self.sampler = ResourceSampler()
        self.gpu = GpuProbe()
        self._page: bytes | None = None

    async def page(self, request: web.Request) -> web.Response:
        if self._page is None:
            self._page = PAGE.read_bytes()
        return web.Response(body=self._page, content_type="text/html", charset="utf-8",
                            headers=PAGE_HEADERS)

    async def stats(self, request: web.Request) -> web.Response:
        gpus = await self.gpu.read()
        resources = self.sampler.sample(self.server.pool.pids())
        return web.json_response(build_snapshot(self.server, resources, gpus),
                                 headers=NO_STORE)


def add_dashboard_routes(app: web.Application, server: EdgeServer) -> None:
    """Register `GET /dashboard` (the page) and `GET /api/stats` (its JSON) on `app`."""
    dashboard = Dashboard(server)
    app.router.add_get("/dashboard", dashboard.page)
    app.router.add_get("/api/stats", dashboard.stats)
    app.on_cleanup.append(lambda _app: dashboard.gpu.close())
