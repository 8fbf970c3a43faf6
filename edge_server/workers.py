"""Inference worker processes and their supervision, seen from the event loop.

`WorkerPool` starts N processes (multiprocessing 'spawn'), each owning one engine, and
runs batches on them, awaiting the texts. Blocking pipe I/O runs in one thread per
worker, never on the loop.
A worker that dies or exceeds its deadline raises `WorkerCrashed` to the caller (who
requeues the batch) and is replaced, with backoff if replacements keep dying.
`acquire()` reserves an idle worker, `run(worker, audios)` decodes on it and releases it.
All methods must be called from the event loop's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing as mp
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

import numpy as np

from edge_server.background import spawn
from edge_server.worker_main import worker_main

log = logging.getLogger(__name__)


class WorkerCrashed(RuntimeError):
    """The worker running a batch died or hung; the batch was not decoded."""


class BatchRejected(RuntimeError):
    """The engine raised for this batch (bad input); the worker is still alive."""


@dataclass(frozen=True)
class WorkerConfig:
    model_id: str | None = None
    device: str = "auto"
    threads: int | None = None
    workers: int = 1
    noop: bool = False
    start_timeout_s: float = 120.0
    min_deadline_s: float = 30.0  # a batch may take at least this long before it is killed


@dataclass
class _Worker:
    index: int
    process: mp.process.BaseProcess
    conn: Connection
    executor: ThreadPoolExecutor
    info: dict = field(default_factory=dict)
    busy: bool = False
    alive: bool = True
    busy_seconds: float = 0.0
    audio_seconds: float = 0.0


class WorkerPool:
    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self._ctx = mp.get_context("spawn")
        self._workers: list[_Worker | None] = [None] * config.workers
        self._idle = asyncio.Condition()
        self._batch_ids = itertools.count()
        self._closing = False
        self._restarts: list[float] = []
        self.restart_count = 0
        self.info: dict = {}

    # ---- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        """Start every worker; returns when all have loaded their engine."""
        await asyncio.gather(*(self._spawn(i) for i in range(self.config.workers)))

    async def stop(self) -> None:
        self._closing = True
        for w in self._workers:
            if w is None:
                continue
            with contextlib.suppress(OSError, BrokenPipeError):
                w.conn.send(("stop",))
        loop = asyncio.get_running_loop()
        for w in self._workers:
            if w is None:
                continue
            await loop.run_in_executor(None, w.process.join, 5.0)
            if w.process.is_alive():
                w.process.kill()
            w.executor.shutdown(wait=False, cancel_futures=True)
            w.conn.close()

    async def _spawn(self, index: int) -> None:
        c = self.config
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=worker_main, name=f"earshot-worker-{index}",
                                 args=(child, c.model_id, c.device, c.threads, c.noop),
                                 daemon=True)
        proc.start()
        child.close()
        worker = _Worker(index, proc, parent, ThreadPoolExecutor(1, f"worker-io-{index}"))
        loop = asyncio.get_running_loop()
        try:
            msg = await asyncio.wait_for(
                loop.run_in_executor(worker.executor, parent.recv), c.start_timeout_s)
        except (EOFError, OSError, TimeoutError) as exc:
            proc.kill()
            raise RuntimeError(f"worker {index} did not start: {exc!r}") from None
        if msg[0] != "ready":
            proc.join(5)
            raise RuntimeError(f"worker {index} could not load the engine: {msg[1]}")
        worker.info = msg[1]
        self.info = msg[1]
        log.info("worker %d ready: pid %s, %s on %s", index, msg[1]["pid"], msg[1]["model"],
                 msg[1]["provider"])
        self._workers[index] = worker
        async with self._idle:
            self._idle.notify_all()

    async def _replace(self, worker: _Worker) -> None:
        worker.alive = False
        with contextlib.suppress(Exception):
            worker.process.kill()
        worker.executor.shutdown(wait=False, cancel_futures=True)
        self._workers[worker.index] = None
        if self._closing:
            return
        self.restart_count += 1
        now = time.monotonic()
        self._restarts = [t for t in self._restarts if now - t < 60] + [now]
        delay = min(30.0, 0.5 * 2 ** max(0, len(self._restarts) - 2))
        log.warning("worker %d died (exit %s); restarting in %.1fs", worker.index,
                    worker.process.exitcode, delay)
        await asyncio.sleep(delay)
        while not self._closing:
            try:
                await self._spawn(worker.index)
                return
            except RuntimeError as exc:
                log.error("%s; retrying in 5s", exc)
                await asyncio.sleep(5)

    # ---- running batches ---------------------------------------------------------------
    @property
    def ready_count(self) -> int:
        return sum(1 for w in self._workers if w is not None and w.alive)

    @property
    def idle_count(self) -> int:
        return sum(1 for w in self._workers if w is not None and w.alive and not w.busy)

    def speed(self) -> float:
        """Measured audio seconds decoded per busy second, summed over live workers."""
        total = 0.0
        for w in self._workers:
            if w is not None and w.busy_seconds > 0:
                total += w.audio_seconds / w.busy_seconds
        return total

    async def wait_idle(self) -> None:
        async with self._idle:
            await self._idle.wait_for(lambda: self.idle_count > 0)

    async def acquire(self) -> _Worker:
        """Reserve an idle worker (waits for one). Pass it to run() or release()."""
        while True:
            await self.wait_idle()
            worker = next((w for w in self._workers if w is not None and w.alive and not w.busy),
                          None)
            if worker is not None:
                worker.busy = True
                return worker

    async def release(self, worker: _Worker) -> None:
        worker.busy = False
        async with self._idle:
            self._idle.notify_all()

    async def run(self, worker: _Worker, audios: list[np.ndarray]) -> list[str]:
        """Decode on a reserved worker, then release it. Raises WorkerCrashed/BatchRejected."""
        batch_id = next(self._batch_ids)
        audio_s = sum(len(a) for a in audios) / 16_000
        deadline = max(self.config.min_deadline_s, 5.0 * audio_s)
        loop = asyncio.get_running_loop()

        def exchange():
            worker.conn.send(("batch", batch_id, audios))
            return worker.conn.recv()

        try:
            msg = await asyncio.wait_for(loop.run_in_executor(worker.executor, exchange),
                                         deadline)
        except (EOFError, OSError, BrokenPipeError, TimeoutError) as exc:
            spawn(self._replace(worker), f"replace-worker-{worker.index}")
            raise WorkerCrashed(f"worker {worker.index} failed during a batch: {exc!r}") from None
        finally:
            await self.release(worker)
        if msg[0] == "error":
            raise BatchRejected(msg[2])
        _, _, texts, busy = msg
        worker.busy_seconds += busy
        worker.audio_seconds += audio_s
        return texts

    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers if w is not None and w.alive]
