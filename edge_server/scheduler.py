"""One dynamic batcher for all sessions: finals first, newest partial per session only.

Sessions `submit()` decode requests; the scheduler forms batches of up to `max_batch`
(waiting at most `max_wait_ms` for a batch to fill while a worker is free), sends them to
the `WorkerPool`, and hands every result to `on_result(request, text, error)`.
- Finals are taken in arrival order before any partial.
- Clip requests (kind "clip": uploaded files, Wyoming utterances) fill what finals and
  partials leave of a batch, at most `clip_budget_s` of audio per batch, so a long upload
  never starves live streams; their results resolve `request.future` instead.
- A session has at most one queued partial: a newer one replaces it (coalescing).
- Partials fill a batch only up to `partial_budget_s` of audio, so a batch of partials
  frees its worker quickly and a final arriving meanwhile never waits behind much work.
- Partials are skipped while the oldest final has waited more than `degrade_after_s`
  (load shedding: partials degrade before finals).
- A batch whose worker died is requeued with each request alone; a request that has now
  been in two crashed batches fails with an error instead of looping.
Runs on the event loop; not thread-safe.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from edge_server.background import spawn
from edge_server.workers import BatchRejected, WorkerCrashed, WorkerPool

log = logging.getLogger(__name__)

MAX_CRASHES = 2


@dataclass(eq=False)
class DecodeRequest:
    session_id: str
    segment_id: int
    kind: str  # "final", "partial" or "clip"
    audio: np.ndarray
    start: int = 0  # stream sample positions of the segment
    end: int = 0
    created: float = field(default_factory=time.monotonic)
    speech_end: float = 0.0  # monotonic time the audio's end was received (finals)
    crashes: int = 0
    solo: bool = False  # run alone (after a crash)
    cut: bool = False  # a final of speech cut short by the server ending the turn (drain)
    future: asyncio.Future | None = None  # clips: resolved with the text (or an exception)

    @property
    def seconds(self) -> float:
        return len(self.audio) / 16_000


ResultCallback = Callable[[DecodeRequest, str | None, str | None], None]


@dataclass
class SchedulerStats:
    batches: int = 0
    finals: int = 0
    partials: int = 0
    partials_dropped: int = 0
    clips: int = 0
    failed: int = 0
    requeued: int = 0
    batch_sizes: deque = field(default_factory=lambda: deque(maxlen=1000))
    final_latency: deque = field(default_factory=lambda: deque(maxlen=2000))


class Scheduler:
    def __init__(self, pool: WorkerPool, on_result: ResultCallback, max_batch: int = 16,
                 max_wait_ms: float = 10.0, degrade_after_s: float = 0.8,
                 partial_budget_s: float = 3.0, clip_budget_s: float = 60.0,
                 on_batch: Callable[[list[DecodeRequest], float], None] | None = None) -> None:
        self.on_batch = on_batch
        self.partial_budget = partial_budget_s
        self.pool = pool
        self.on_result = on_result
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.degrade_after = degrade_after_s
        self.finals: deque[DecodeRequest] = deque()
        self.partials: dict[str, DecodeRequest] = {}
        self.clips: deque[DecodeRequest] = deque()
        self.clip_budget = clip_budget_s
        self.in_flight = 0
        self.stats = SchedulerStats()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    # ---- API for sessions --------------------------------------------------------------
    def submit(self, req: DecodeRequest) -> None:
        if req.kind == "clip":
            self.clips.append(req)
        elif req.kind == "final":
            self.finals.append(req)
            old = self.partials.get(req.session_id)
            if old is not None and old.segment_id <= req.segment_id:
                self._drop_partial(req.session_id)
        else:
            if req.session_id in self.partials:
                self._drop_partial(req.session_id)
            self.partials[req.session_id] = req
        self._idle.clear()
        self._wake.set()

    def _drop_partial(self, session_id: str) -> None:
        """Discard a queued partial; its session hears (text None) so it may ask again."""
        req = self.partials.pop(session_id)
        self.stats.partials_dropped += 1
        self.on_result(req, None, None)

    def drop_session(self, session_id: str) -> None:
        """Forget queued work of a session that is gone (in-flight work completes)."""
        self.partials.pop(session_id, None)
        self.finals = deque(r for r in self.finals if r.session_id != session_id)
        for req in self.clips:
            if req.session_id == session_id and req.future is not None:
                req.future.cancel()
        self.clips = deque(r for r in self.clips if r.session_id != session_id)
        self._check_idle()

    @property
    def queue_depth(self) -> int:
        return len(self.finals) + len(self.partials) + len(self.clips)

    def oldest_final_wait(self) -> float:
        return time.monotonic() - self.finals[0].created if self.finals else 0.0

    @property
    def degraded(self) -> bool:
        return self.oldest_final_wait() > self.degrade_after

    async def wait_idle(self) -> None:
        """Until nothing is queued or running."""
        await self._idle.wait()

    # ---- loop --------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="scheduler")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            if not self.finals and not self.partials and not self.clips:
                self._wake.clear()
                await self._wake.wait()
            worker = await self.pool.acquire()
            await self._fill_window()
            batch = self._take_batch()
            if not batch:
                await self.pool.release(worker)
                continue
            self.in_flight += 1
            spawn(self._dispatch(worker, batch), "dispatch")

    async def _fill_window(self) -> None:
        """Wait up to max_wait for the queue to reach a full batch."""
        deadline = time.monotonic() + self.max_wait
        while self.queue_depth < self.max_batch and time.monotonic() < deadline:
            if (self.finals and self.finals[0].solo) or (self.clips and self.clips[0].solo):
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), deadline - time.monotonic())
            except TimeoutError:
                return

    def _take_batch(self) -> list[DecodeRequest]:
        if self.finals and self.finals[0].solo:
            return [self.finals.popleft()]
        if not self.finals and self.clips and self.clips[0].solo:
            return [self.clips.popleft()]
        degraded = self.degraded  # judged before this batch takes the waiting finals
        batch: list[DecodeRequest] = []
        while self.finals and len(batch) < self.max_batch and not self.finals[0].solo:
            batch.append(self.finals.popleft())
        if len(batch) < self.max_batch and self.partials:
            if degraded:
                for session_id in list(self.partials):
                    self._drop_partial(session_id)
            else:
                budget = self.partial_budget
                for req in sorted(self.partials.values(), key=lambda r: r.created):
                    if len(batch) >= self.max_batch or (budget < req.seconds and batch):
                        break
                    budget -= req.seconds
                    batch.append(self.partials.pop(req.session_id))
        budget = self.clip_budget
        while self.clips and len(batch) < self.max_batch and not self.clips[0].solo:
            if budget < self.clips[0].seconds and batch:
                break
            budget -= self.clips[0].seconds
            batch.append(self.clips.popleft())
        return batch

    async def _dispatch(self, worker, batch: list[DecodeRequest]) -> None:
        started = time.monotonic()
        try:
            texts = await self.pool.run(worker, [r.audio for r in batch])
        except WorkerCrashed as exc:
            log.warning("%s; requeueing %d request(s) one by one", exc, len(batch))
            for req in batch:
                req.crashes += 1
                if req.crashes >= MAX_CRASHES:
                    self.stats.failed += 1
                    self.on_result(req, None, "decoding this segment crashed the worker twice")
                elif req.kind in ("final", "clip"):
                    req.solo = True
                    self.stats.requeued += 1
                    (self.finals if req.kind == "final" else self.clips).appendleft(req)
            self._wake.set()
        except BatchRejected as exc:
            for req in batch:
                self.stats.failed += 1
                self.on_result(req, None, str(exc))
        else:
            if self.on_batch is not None:
                self.on_batch(batch, time.monotonic() - started)
            self.stats.batches += 1
            self.stats.batch_sizes.append(len(batch))
            now = time.monotonic()
            for req, text in zip(batch, texts, strict=True):
                if req.kind == "final":
                    self.stats.finals += 1
                    self.stats.final_latency.append(now - (req.speech_end or req.created))
                elif req.kind == "clip":
                    self.stats.clips += 1
                else:
                    self.stats.partials += 1
                self.on_result(req, text, None)
        finally:
            self.in_flight -= 1
            self._check_idle()

    def _check_idle(self) -> None:
        if self.in_flight == 0 and not self.finals and not self.partials and not self.clips:
            self._idle.set()
