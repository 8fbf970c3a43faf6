"""The processes one Redis-queue benchmark case runs on: a throwaway `redis-server`, W
supervised `earshot-worker`s, and the `earshot-server` in front (in-process pool or Redis
gateway).

- `Redis()`: `redis-server` on 127.0.0.1, a free port, no persistence, its own temporary
  folder; `stop()` ends it and removes the folder.
- `Workers(url, count, args, env)`: `count` `earshot-worker` processes (this interpreter,
  `-m edge_server.queue.worker_cli`), each with a known id (`bench-{index}.{run}`, its
  Redis consumer name) and restarted 0.1 s after it exits (systemd's default RestartSec). Their
  output lines are kept with a monotonic time stamp; `kill(index)` SIGKILLs one.
- `Stack`: one case's whole set (`start_inproc` / `start_redis`), `stop()` ends every
  process it started (server first, then workers, then Redis), also after a failed start.

Needs `redis-server` on PATH for the Redis cases (`RedisMissing` otherwise). Blocking
calls from one thread (the benchmark's main thread); the supervisor threads only read
their worker's output and restart it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

from loadtest.local_server import LocalServer, stop_process


class RedisMissing(RuntimeError):
    """redis-server is not installed (or not on PATH)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Redis:
    def __init__(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RedisMissing("redis-server is not on PATH (Debian/Ubuntu: apt-get install "
                               "redis-server)")
        self.port = free_port()
        self.folder = tempfile.mkdtemp(prefix="bench-redis-")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.folder], stdout=subprocess.DEVNULL)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("redis-server did not start")

    def client(self):
        import redis

        return redis.Redis.from_url(self.url, socket_connect_timeout=5)

    def stop(self) -> None:
        stop_process(self.proc, timeout_s=10)
        shutil.rmtree(self.folder, ignore_errors=True)


@dataclass
class Slot:
    """One supervised worker: the process now running in it and its Redis consumer id."""

    index: int
    run: int = -1
    proc: subprocess.Popen | None = None
    ready: bool = False
    exits: list[tuple[float, int]] = field(default_factory=list)  # (time, exit code)

    @property
    def worker_id(self) -> str:
        return f"bench-{self.index}.{self.run}"


class Workers:
    def __init__(self, url: str, count: int, args: list[str], env: dict) -> None:
        self.url, self.args, self.env = url, list(args), env
        self.slots = [Slot(i) for i in range(count)]
        self.logs: list[tuple[float, str]] = []  # (monotonic time, line) of every worker
        self.stopping = False
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._keep, args=(s,), daemon=True,
                                          name=f"bench-worker-{s.index}") for s in self.slots]
        for t in self._threads:
            t.start()

    def _keep(self, slot: Slot) -> None:
        while not self.stopping:
            with self._lock:
                if self.stopping:
                    return
                slot.run += 1
                slot.ready = False
                slot.proc = subprocess.Popen(
                    [sys.executable, "-m", "edge_server.queue.worker_cli", "--queue",
                     self.url, "--id", slot.worker_id, *self.args],
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env)
            proc = slot.proc
            assert proc.stdout is not None
            for line in proc.stdout:
                self.logs.append((time.monotonic(), line))
                if line.startswith("earshot-worker ready"):
                    slot.ready = True
            code = proc.wait()
            slot.ready = False
            slot.exits.append((time.monotonic(), code))
            time.sleep(0.1)  # systemd's default RestartSec; no busy loop if it cannot start

    def ready_indices(self) -> list[int]:
        return [s.index for s in self.slots
                if s.ready and s.proc is not None and s.proc.poll() is None]

    def wait_ready(self, timeout: float = 120) -> None:
        end = time.monotonic() + timeout
        while len(self.ready_indices()) < len(self.slots):
            if time.monotonic() > end:
                raise RuntimeError("workers never ready: " +
                                   "".join(ln for _, ln in self.logs[-20:]))
            time.sleep(0.05)

    def kill(self, index: int) -> tuple[str, int]:
        """SIGKILL the worker in slot `index` now; (its consumer id, its pid)."""
        slot = self.slots[index]
        assert slot.proc is not None
        wid, pid = slot.worker_id, slot.proc.pid
        slot.ready = False
        os.kill(pid, signal.SIGKILL)
        return wid, pid

    def claim_lines(self, since: float = 0.0) -> list[dict]:
        """The workers' "claimed task ... (delivery d, queued Xs ago)" lines after `since`."""
        out = []
        for at, ln in list(self.logs):
            m = re.search(r"worker (\S+) claimed task (\S+) of (\S+) \(delivery (\d+), "
                          r"queued ([0-9.]+)s ago\)", ln)
            if m and at >= since:
                out.append({"at": at, "by": m.group(1), "task": m.group(2),
                            "stream": m.group(3), "delivery": int(m.group(4)),
                            "queued_s": float(m.group(5))})
        return out

    def stop(self) -> None:
        with self._lock:
            self.stopping = True
        procs = [s.proc for s in self.slots if s.proc is not None]
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for t in self._threads:
            t.join(5)


@dataclass
class Stack:
    """One case's processes. `url`: the earshot-server's base URL."""

    name: str
    server: LocalServer | None = None
    redis: Redis | None = None
    workers: Workers | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
        if self.workers is not None:
            self.workers.stop()
        if self.redis is not None:
            self.redis.stop()


@dataclass(frozen=True)
class Setup:
    """What every case shares: model, onnxruntime threads per worker, batch, environment
    and the server's extra TOML settings."""

    model: str
    threads: int
    batch: int
    env: dict
    settings: dict

    def server_args(self) -> list[str]:
        return ["--model", self.model, "--threads", str(self.threads),
                "--max-batch", str(self.batch)]

    def worker_args(self) -> list[str]:
        return ["--model", self.model, "--threads", str(self.threads), "--device", "cpu",
                "--batch", str(self.batch)]


def start_inproc(setup: Setup, workers: int, settings: dict | None = None) -> Stack:
    """`earshot-server --workers W` (the in-process pool), ready."""
    stack = Stack(f"inproc-{workers}")
    try:
        stack.server = LocalServer([*setup.server_args(), "--workers", str(workers),
                                    "--device", "cpu"], settings={**setup.settings,
                                                                   **(settings or {})},
                                   env=setup.env).start()
    except BaseException:
        stack.stop()
        raise
    return stack


def start_redis(setup: Setup, workers: int, settings: dict | None = None) -> Stack:
    """redis-server, W supervised earshot-workers (all ready), then `earshot-server
    --queue` (ready: it has seen their heartbeats)."""
    stack = Stack(f"redis-{workers}")
    try:
        stack.redis = Redis()
        stack.workers = Workers(stack.redis.url, workers, setup.worker_args(), setup.env)
        stack.workers.wait_ready()
        stack.server = LocalServer([*setup.server_args(), "--queue", stack.redis.url],
                                   settings={**setup.settings, **(settings or {})},
                                   env=setup.env).start()
        _wait_live(stack.server, workers)
    except BaseException:
        stack.stop()
        raise
    return stack


def _wait_live(server: LocalServer, count: int, timeout: float = 30.0) -> None:
    """Until the gateway counts `count` live workers (their heartbeats)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if (server.health().get("queue") or {}).get("live_workers", 0) >= count:
            return
        time.sleep(0.2)
    raise RuntimeError(f"the gateway never saw {count} live workers")
