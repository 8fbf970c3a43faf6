"""Inference worker processes and their supervision, seen from the event loop.

`WorkerPool` starts N processes (multiprocessing 'spawn'), each owning one engine, and
runs batches on them, awaiting the texts. Blocking pipe I/O runs in one thread per
worker, never on the loop.

- A worker that dies during a batch, or runs past the batch's deadline (it is then
  killed), raises `WorkerCrashed` to the caller, who retries the rows; `WorkerLost` (a
  `WorkerCrashed`) when the reserved worker was already dead before the batch was sent
  (the rows are not to blame); an engine exception raises `BatchRejected` (the worker
  lives on).
- Every dead worker is replaced in its slot: at once, unless the slot's workers keep
  dying without finishing a batch (from the third death in a row: after 0.5 s, doubling
  up to 30 s). A worker
  found dead while idle (its process sentinel closes) is replaced before any batch is
  sent to it. A replacement that cannot load its engine is retried every 5 s.
- Hang deadline of a batch holding `a` seconds of audio:
  `clamp(deadline_factor * a / v, deadline_floor_s, deadline_cap_s)`, where `v` is the
  pool's measured speed (audio seconds decoded per busy second of one worker, over the
  last `SPEED_WINDOW` batches); `deadline_cap_s` until `MIN_MEASURED` batches are measured.
- States: `ready_count` workers are ready; `restarting` slots are being replaced;
  `ever_ready` once any worker has loaded; `failed` when none is ready and every slot's
  last start attempt failed (the engine cannot load any more); `serving` = ever ready,
  not failed, not closing. While slots restart, `acquire()` simply waits: work queued by
  the caller waits for a worker, it never fails for want of one.
- Models: every worker loads every model of `model_ids` (the first is the default; empty:
  the catalog's default); a batch names the model it runs on (`run(worker, audios,
  model)`), one model per batch. Speed and deadlines are measured per model (`speed(model)`;
  `speed()` over all batches).
`acquire()` reserves an idle worker, `run(worker, audios, model)` decodes on it and
releases it. `run(..., prefixes=)` gives a draft token prefix per row (partials: see
AsrEngine.decode_batch); every result carries each row's tokens (`Decoded.tokens`).
All methods must be called from the event loop's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing as mp
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

import numpy as np

from edge_server.background import spawn
from edge_server.worker_main import worker_main

log = logging.getLogger(__name__)

SPEED_WINDOW = 200  # recent batches the measured speed is taken over
MIN_MEASURED = 5  # batches measured before the deadline follows the speed
RESTART_RETRY_S = 5.0  # wait between attempts to start a replacement that failed to load


class WorkerCrashed(RuntimeError):
    """The worker running a batch died or hung; the batch was not decoded."""


class WorkerLost(WorkerCrashed):
    """The reserved worker was found dead before the batch was sent: the batch is blameless."""


class BatchRejected(RuntimeError):
    """The engine raised for this batch (bad input); the worker is still alive."""


@dataclass(frozen=True)
class WorkerConfig:
    model_ids: tuple[str, ...] = ()  # loaded by every worker; the first is the default
    device: str = "auto"
    threads: int | None = None
    workers: int = 1
    noop: bool = False
    start_timeout_s: float = 120.0
    deadline_floor_s: float = 5.0  # a batch may always take this long before it is killed
    deadline_cap_s: float = 20.0  # ... and never longer
    deadline_factor: float = 4.0  # ... in between: this many times its expected cost


@dataclass(frozen=True)
class Decoded:
    """A decoded batch: one text per input, and the engine's busy seconds. `errors`
    (a queue pool's, edge_server/queue): per row None or why that row alone failed (its
    text is then ""); None when every row decoded. `tokens`: each row's token ids (empty
    for a failed row or an engine without tokens)."""

    texts: list[str]
    busy_s: float
    errors: list[str | None] | None = None
    tokens: list[tuple[int, ...]] | None = None  # per row (None: the pool sent none)


@dataclass
class _Worker:
    index: int
    process: mp.process.BaseProcess
    conn: Connection
    executor: ThreadPoolExecutor
    info: dict = field(default_factory=dict)
    busy: bool = False
    alive: bool = True
    replaced: bool = False  # _replace has run for it (exactly once)
    exited: bool = False  # its process exited (sentinel) while it ran a batch
    watched: bool = False  # its sentinel is registered with the loop


def measured_speed(measured) -> float | None:
    """Audio seconds per busy second over `measured` (audio_s, busy_s) pairs; None until
    `MIN_MEASURED` of them; inf when they took no measurable time. (Shared with the
    queue pool, edge_server/queue/pool.py.)"""
    if len(measured) < MIN_MEASURED:
        return None
    audio = sum(a for a, _ in measured)
    busy = sum(b for _, b in measured)
    return audio / busy if busy > 0 else float("inf")


def hang_deadline(config, audio_s: float, speed: float | None) -> float:
    """Seconds a batch of `audio_s` may run at `speed` before it counts as hung:
    `deadline_factor` x the expected time, between `deadline_floor_s` and `deadline_cap_s`
    (the cap while the speed is unknown). `config` has those three fields."""
    if speed is None:
        return config.deadline_cap_s
    return min(config.deadline_cap_s,
               max(config.deadline_floor_s, config.deadline_factor * audio_s / speed))


class WorkerPool:
    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self._ctx = mp.get_context("spawn")
        self._workers: list[_Worker | None] = [None] * config.workers
        self._idle = asyncio.Condition()
        self._batch_ids = itertools.count()
        self._closing = False
        self._replacing: set[int] = set()
        self._deaths = [0] * config.workers  # per slot: deaths since its last finished batch
        self._start_failures = [0] * config.workers  # per slot: failed starts in a row
        self._measured: deque[tuple[float, float]] = deque(maxlen=SPEED_WINDOW)
        self._measured_by_model: dict[str, deque[tuple[float, float]]] = {}
        self.restart_count = 0
        self.ever_ready = False
        self.info: dict = {}

    # ---- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        """Start every worker; returns when all have loaded their engine (or failed to).

        Raises RuntimeError when no worker could start; a slot that failed while others
        started stays empty (logged) and counts as failed."""
        results = await asyncio.gather(*(self._spawn(i) for i in range(self.config.workers)),
                                       return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        for i, r in enumerate(results):
            if isinstance(r, BaseException):
                self._start_failures[i] += 1
                log.error("worker %d did not start: %s", i, r)
        if len(errors) == len(results):
            raise errors[0]

    async def stop(self) -> None:
        self._closing = True
        for w in self._workers:
            if w is None:
                continue
            self._unwatch(w)
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
                                 args=(child, tuple(c.model_ids), c.device, c.threads, c.noop),
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
            worker.executor.shutdown(wait=False, cancel_futures=True)
            raise RuntimeError(f"worker {index} did not start: {exc!r}") from None
        if msg[0] != "ready":
            proc.join(5)
            worker.executor.shutdown(wait=False, cancel_futures=True)
            raise RuntimeError(f"worker {index} could not load the engine: {msg[1]}")
        if self._closing:
            proc.kill()
            return
        worker.info = msg[1]
        self.info = msg[1]
        log.info("worker %d ready: pid %s, %s on %s", index, msg[1]["pid"],
                 ", ".join(msg[1]["models"]), msg[1]["provider"])
        self._workers[index] = worker
        self._start_failures[index] = 0
        self.ever_ready = True
        self._watch(worker)
        async with self._idle:
            self._idle.notify_all()

    def _watch(self, worker: _Worker) -> None:
        """Replace the worker as soon as its process exits while idle."""
        try:
            asyncio.get_running_loop().add_reader(worker.process.sentinel, self._exited, worker)
            worker.watched = True
        except (NotImplementedError, OSError, ValueError):  # a loop without add_reader
            worker.watched = False

    def _unwatch(self, worker: _Worker) -> None:
        if worker.watched:
            worker.watched = False
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(worker.process.sentinel)

    def _exited(self, worker: _Worker) -> None:
        self._unwatch(worker)
        if worker.busy:
            worker.exited = True  # the running batch notices (EOF, or after its answer)
            return
        if worker.replaced or self._closing:
            return
        worker.alive = False
        log.warning("worker %d (pid %s) exited while idle", worker.index, worker.process.pid)
        spawn(self._replace(worker), f"replace-worker-{worker.index}")

    async def _replace(self, worker: _Worker) -> None:
        if worker.replaced:
            return
        worker.replaced = True
        worker.alive = False
        self._unwatch(worker)
        with contextlib.suppress(Exception):
            worker.process.kill()
        worker.executor.shutdown(wait=False, cancel_futures=True)
        with contextlib.suppress(Exception):
            worker.conn.close()
        index = worker.index
        if self._workers[index] is worker:
            self._workers[index] = None
        if self._closing:
            return
        self._replacing.add(index)
        try:
            self.restart_count += 1
            self._deaths[index] += 1
            deaths = self._deaths[index]
            delay = 0.0 if deaths <= 2 else min(30.0, 0.5 * 2 ** (deaths - 3))
            with contextlib.suppress(Exception):
                await asyncio.get_running_loop().run_in_executor(None, worker.process.join, 1.0)
            log.warning("worker %d died (exit %s); restarting%s", index, worker.process.exitcode,
                        f" in {delay:.1f}s" if delay else "")
            await asyncio.sleep(delay)
            while not self._closing:
                try:
                    await self._spawn(index)
                    return
                except RuntimeError as exc:
                    self._start_failures[index] += 1
                    log.error("%s; retrying in %gs", exc, RESTART_RETRY_S)
                    await asyncio.sleep(RESTART_RETRY_S)
        finally:
            self._replacing.discard(index)

    # ---- state -----------------------------------------------------------------------
    @property
    def ready_count(self) -> int:
        return sum(1 for w in self._workers if w is not None and w.alive)

    @property
    def idle_count(self) -> int:
        return sum(1 for w in self._workers if w is not None and w.alive and not w.busy)

    @property
    def size(self) -> int:
        """Workers counted for capacity: the configured ones."""
        return self.config.workers

    @property
    def restarting(self) -> int:
        """Slots whose worker died and is being replaced (not counting slots whose
        replacement already failed to load: those are failing, not restarting)."""
        return sum(1 for i in self._replacing if self._start_failures[i] == 0)

    @property
    def failed(self) -> bool:
        """No worker is ready and every slot's last attempt to start one failed."""
        return self.ready_count == 0 and all(n > 0 for n in self._start_failures)

    @property
    def serving(self) -> bool:
        """Work submitted now will be decoded: a worker is ready, or one has been and its
        slots are restarting (not failing to load)."""
        return self.ever_ready and not self.failed and not self._closing

    @property
    def default_model(self) -> str | None:
        """The model a batch without one runs on (None: the engine's own default)."""
        return self.config.model_ids[0] if self.config.model_ids else None

    def speed(self, model: str | None = None) -> float | None:
        """Measured audio seconds decoded per busy second of one worker over recent batches
        (of `model` only, when given); None until `MIN_MEASURED` such batches; inf when they
        took no measurable time."""
        measured = self._measured if model is None else self._measured_by_model.get(model, ())
        return measured_speed(measured)

    def deadline(self, audio_s: float, model: str | None = None) -> float:
        """Seconds a batch of `audio_s` audio (on `model`) may run before its worker is
        killed as hung (from that model's measured speed)."""
        return hang_deadline(self.config, audio_s, self.speed(model))

    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers if w is not None and w.alive]

    # ---- running batches ---------------------------------------------------------------
    async def wait_idle(self) -> None:
        async with self._idle:
            await self._idle.wait_for(lambda: self.idle_count > 0)

    async def acquire(self) -> _Worker:
        """Reserve an idle worker (waits for one, also while every slot restarts).
        Pass it to run() or release()."""
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

    async def run(self, worker: _Worker, audios: list[np.ndarray],
                  model: str | None = None,
                  prefixes: list[tuple[int, ...]] | None = None) -> Decoded:
        """Decode on a reserved worker with `model` (None: the default), then release it.
        `prefixes`: None or a draft token prefix per row (AsrEngine.decode_batch).
        Raises WorkerCrashed/BatchRejected (also for a model the workers did not load)."""
        batch_id = next(self._batch_ids)
        model = model or self.default_model
        audio_s = sum(len(a) for a in audios) / 16_000
        deadline = self.deadline(audio_s, model)
        loop = asyncio.get_running_loop()

        def exchange():
            worker.conn.send(("batch", batch_id, audios, model, prefixes))
            return worker.conn.recv()

        try:
            if worker.exited or not worker.process.is_alive():
                worker.alive = False
                spawn(self._replace(worker), f"replace-worker-{worker.index}")
                raise WorkerLost(f"worker {worker.index} was dead before the batch was sent")
            try:
                msg = await asyncio.wait_for(loop.run_in_executor(worker.executor, exchange),
                                             deadline)
            except (EOFError, OSError, BrokenPipeError, TimeoutError) as exc:
                worker.alive = False  # before release: nobody may acquire it again
                spawn(self._replace(worker), f"replace-worker-{worker.index}")
                what = (f"ran past its {deadline:.1f}s deadline"
                        if isinstance(exc, TimeoutError) else f"died ({exc!r})")
                raise WorkerCrashed(f"worker {worker.index} {what} during a batch of "
                                    f"{len(audios)} ({audio_s:.1f}s of audio)") from None
            if worker.exited:  # it answered, then died: replace it before it is reused
                worker.alive = False
                spawn(self._replace(worker), f"replace-worker-{worker.index}")
        finally:
            await self.release(worker)
        if msg[0] == "error":
            raise BatchRejected(msg[2])
        texts, busy = msg[2], msg[3]
        tokens = msg[4] if len(msg) > 4 else None
        self._deaths[worker.index] = 0
        self._measured.append((audio_s, busy))
        if model is not None:
            self._measured_by_model.setdefault(model, deque(maxlen=SPEED_WINDOW)).append(
                (audio_s, busy))
        return Decoded(texts, busy, tokens=tokens)
