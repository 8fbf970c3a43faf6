"""Server CPU and peak memory during a run.

- `LocalProbe(pid)`: a server process on this machine (the one the tool started, or a
  `--server-pid`): psutil over the process and its descendants (the engine workers,
  upload decoders), sampled every `every_s` in a daemon thread. CPU is the CPU seconds
  the tree used divided by wall time (1.0 = one core busy); a worker killed mid-run
  takes its last sample's CPU with it (slight undercount). Peak memory: highest sum of
  RSS over the tree at any sample.
- `RemoteProbe(url)`: another box: its `/api/stats` (open without the token: counters
  only) every `every_s`; CPU: mean of its `resources.cpu_percent` / 100; peak: max of
  `resources.rss_bytes`. A server that does not answer gives None ("n/a").

start() / stop() from one thread; `result()` after stop().
"""

from __future__ import annotations

import json
import ssl
import threading
import time
import urllib.request

import psutil


class LocalProbe:
    def __init__(self, pid: int, every_s: float = 0.5) -> None:
        self.pid = pid
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cpu: dict[int, float] = {}  # pid -> last CPU seconds seen
        self._first: dict[int, float] = {}  # pid -> CPU seconds at its first sample
        self.peak_rss = 0
        self._t0 = self._t1 = 0.0

    def _tree(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    def _sample(self) -> None:
        rss = 0
        for proc in self._tree():
            try:
                with proc.oneshot():
                    t = proc.cpu_times()
                    cpu = t.user + t.system
                    rss += proc.memory_info().rss
            except psutil.Error:
                continue
            self._first.setdefault(proc.pid, cpu if proc.pid == self.pid else 0.0)
            self._cpu[proc.pid] = cpu
        self.peak_rss = max(self.peak_rss, rss)

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self._sample()

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._sample()
        # workers alive at the start: count only what they use from now on
        for pid, cpu in self._cpu.items():
            self._first[pid] = cpu
        self._thread = threading.Thread(target=self._loop, name="loadtest-probe", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._sample()
        self._t1 = time.monotonic()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def result(self) -> dict:
        wall = max(self._t1 - self._t0, 1e-9)
        used = sum(cpu - self._first.get(pid, 0.0) for pid, cpu in self._cpu.items())
        return {"server_cpu_cores": round(used / wall, 3), "server_peak_rss_mb":
                round(self.peak_rss / 2**20, 1) if self.peak_rss else None,
                "server_probe": "local"}


class RemoteProbe:
    def __init__(self, url: str, every_s: float = 1.0) -> None:
        self.url = url.rstrip("/").replace("ws://", "http://", 1).replace("wss://", "https://", 1)
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.cpu: list[float] = []
        self.peak_rss = 0
        # counters only, no token is sent: the certificate is not checked here
        self._ctx = ssl.create_default_context()
        self._ctx.check_hostname = False
        self._ctx.verify_mode = ssl.CERT_NONE

    def _sample(self) -> None:
        try:
            with urllib.request.urlopen(self.url + "/api/stats", timeout=3,
                                        context=self._ctx) as resp:
                res = json.loads(resp.read()).get("resources") or {}
        except (OSError, ValueError):
            return
        if isinstance(res.get("cpu_percent"), (int, float)):
            self.cpu.append(float(res["cpu_percent"]) / 100)
        if isinstance(res.get("rss_bytes"), int):
            self.peak_rss = max(self.peak_rss, res["rss_bytes"])

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self._sample()

    def start(self) -> None:
        self._sample()  # primes the server's cpu_percent
        self.cpu.clear()
        self._thread = threading.Thread(target=self._loop, name="loadtest-probe", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def result(self) -> dict:
        return {"server_cpu_cores": round(sum(self.cpu) / len(self.cpu), 3) if self.cpu
                else None,
                "server_peak_rss_mb": round(self.peak_rss / 2**20, 1) if self.peak_rss
                else None, "server_probe": "/api/stats" if self.cpu else "n/a"}
