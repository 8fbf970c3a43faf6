"""One dynamic batcher for all sessions: fair across sessions, finals before partials.

Sessions `submit()` decode requests; the scheduler forms batches of up to `max_batch`
(waiting at most `max_wait_ms` for a batch to fill while a worker is free), sends them to
the `WorkerPool`, and hands every result to `on_result(request, text, error)`.

Batch composition, in this order of priority:
1. A row being retried (see failures below) runs alone, before anything else.
2. Finals, round-robin across sessions: each round visits the sessions in the order of
   their oldest waiting final (oldest first) and takes one final from each (a session's
   own finals in order). While other sessions have work queued, a session takes at most
   `max_session_rows` rows in this pass. So whatever one client floods, every session
   with a waiting final gets one into the next batch (as long as at most `max_batch`
   sessions wait; beyond that, the sessions whose oldest final waited longest).
3. Partials, at most one per session (a newer one replaces a queued one: coalescing),
   oldest first, up to `partial_budget_s` of audio, so a batch of partials frees its
   worker quickly. Partials are dropped while a final has waited more than
   `degrade_after_s` to be served (load shedding: partials degrade before finals; the
   wait is `oldest_final_wait()`: a session's next final counts from when the one before
   it was taken, so one client's backlog is not the server being behind), and until that
   wait has stayed below `degrade_recover_s` for `degrade_hold_s` (`degraded`, hysteresis).
4. Finals again, without the per-session cap, unless the batch holds a session's last
   waiting final: a batch carrying such a final (a live stream's) stays small so that it
   decodes quickly; one made only of backlogged sessions' finals fills up (throughput),
   but while other sessions are active (submitted anything in the last `ACTIVE_S`) only
   up to `backlog_batch_s` of expected decode time (audio / the pool's measured speed),
   so a worker busy with a flood frees up soon for them.
5. Clip requests (kind "clip": uploaded files, Wyoming utterances), round-robin across
   jobs like finals, at most `clip_budget_s` of audio per batch, so a long upload never
   starves live streams; their results resolve `request.future` instead.

Failures (nothing is lost, nothing loops):
- A batch that fails (the engine raised, the worker died, or it ran past its deadline and
  was killed) is retried row by row before any row is failed. A row that fails alone is
  reported with its error (`on_result(req, None, error)`); a row that has now been in two
  batches that killed a worker fails with "crashed the worker twice" (poison rule).
- A batch sent to a worker that was already dead (`WorkerLost`) goes back to the queues
  unchanged: its rows are not to blame.
- A queue pool (edge_server/queue: workers on other machines) recovers a dead worker's
  rows itself (Redis XAUTOCLAIM) and reports a row its workers dead-lettered as that row's
  error (`Decoded.errors`): the scheduler fails just that row.
- Partials follow the same rules (their retry is dropped instead once degraded or once
  their segment's final is queued); every partial submitted is answered exactly once:
  decoded text, or text None (dropped: the session may ask again), or an error.

Models (a server may serve several; every worker loads them all): each request carries
its `model` (a request without one takes its session's, bound with `bind_model()`, else
the pool's default), and a batch holds one model only. Each batch goes to the model whose
work has waited longest: a final counts from when it became its session's next
(`FairQueue.front_wait`) plus `FINAL_HEAD_START_S` (finals before partials), a partial from
when it was queued, a clip like a final without the head start; retries go first, alone,
whatever their model. So one model's backlog cannot starve the other: the other's oldest
request only grows older until it wins. Within the chosen model the rules above apply.
While no worker is ready (all restarting) requests simply wait in the queues.

Prefixes: a request's `prefix` (partials only: a draft from its session's previous
partial, which the engine verifies: partial_policy.StablePrefix) is passed to the pool
(`run(..., prefixes=)`, only when a row of the batch has one); the pool's per-row tokens
are set on each request (`req.tokens`) before `on_result`, so the session can draft the
next prefix.
Runs on the event loop; not thread-safe.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from edge_server.background import spawn
from edge_server.partial_policy import ShedGate
from edge_server.workers import BatchRejected, WorkerCrashed, WorkerLost, WorkerPool

log = logging.getLogger(__name__)

MAX_CRASHES = 2
SPEED_WINDOW = 200  # recent batches with finals/clips that measure the decode speed
CAPACITY_MIN_BATCHES = 20  # ... measured before that speed is trusted for admission
CRASHED_TWICE = "decoding this segment crashed the worker twice"
ACTIVE_S = 5.0  # a session that submitted anything this recently is active (live)
FINAL_HEAD_START_S = 0.25  # a model's waiting final outranks partials this much younger
_ANY = object()  # FairQueue.take: requests of any model


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
    solo: bool = False  # run alone (a retry, or a segment suspected of crashing workers)
    cut: bool = False  # a final of speech cut short by the server ending the turn (drain)
    future: asyncio.Future | None = None  # clips: resolved with the text (or an exception)
    model: str | None = None  # catalog id; None: the session's (bind_model), else the default
    prefix: tuple[int, ...] = ()  # partials: a draft of the first token ids (engine verifies)
    tokens: tuple[int, ...] | None = None  # set before on_result: the decoded token ids

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
    requeued: int = 0  # rows retried alone after their batch failed
    batch_failures: int = 0  # batches that failed (crash, hang, engine error)
    batch_sizes: deque = field(default_factory=lambda: deque(maxlen=1000))
    model_batches: Counter = field(default_factory=Counter)  # model id -> batches decoded
    final_latency: deque = field(default_factory=lambda: deque(maxlen=2000))


class FairQueue:
    """Requests of one kind, queued per session; taken round-robin, oldest session first.

    `len()` is the number of requests; `take()` implements the round-robin of the module
    docstring. Event loop only."""

    def __init__(self) -> None:
        self._queues: dict[str, deque[DecodeRequest]] = {}
        self._front_since: dict[str, float] = {}  # when each session's front became front
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __iter__(self):
        for q in self._queues.values():
            yield from q

    def sessions(self) -> Iterable[str]:
        return self._queues.keys()

    def push(self, req: DecodeRequest) -> None:
        if req.session_id not in self._queues:
            self._front_since[req.session_id] = req.created
        self._queues.setdefault(req.session_id, deque()).append(req)
        self._count += 1

    def push_front(self, req: DecodeRequest) -> None:
        self._front_since[req.session_id] = req.created
        self._queues.setdefault(req.session_id, deque()).appendleft(req)
        self._count += 1

    def front_wait(self) -> float:
        """Longest time any session's next request has waited to be served: since it was
        queued, or since the session's previous one was taken if later. (A session's own
        backlog behind its front is its own doing, not the server's lateness.)"""
        if not self._front_since:
            return 0.0
        return time.monotonic() - min(self._front_since.values())

    def front(self, session_id: str) -> DecodeRequest:
        """The next request of a session that has any queued."""
        return self._queues[session_id][0]

    def oldest_front(self) -> dict[str | None, float]:
        """Per model: the earliest time one of its sessions' next request became next."""
        oldest: dict[str | None, float] = {}
        for sid, q in self._queues.items():
            since = self._front_since[sid]
            model = q[0].model
            oldest[model] = min(since, oldest.get(model, since))
        return oldest

    def remove_session(self, session_id: str) -> list[DecodeRequest]:
        removed = list(self._queues.pop(session_id, ()))
        self._front_since.pop(session_id, None)
        self._count -= len(removed)
        return removed

    def take(self, batch: list[DecodeRequest], max_rows: int, per_session: Counter,
             cap: int | None = None, budget: float = float("inf"),
             model: object = _ANY) -> float:
        """Append requests to `batch` round-robin until it holds `max_rows`: per round, one
        from each session, sessions ordered by their oldest request. A session stops at
        `cap` rows in the batch (`per_session` counts them, updated here) or when its next
        request would exceed the audio `budget` (a batch's first row always fits). With
        `model`, only sessions whose requests are for that model take part.
        Returns the budget left."""
        blocked: set[str] = set()
        while len(batch) < max_rows:
            order = sorted((q[0].created, sid) for sid, q in self._queues.items()
                           if sid not in blocked and (cap is None or per_session[sid] < cap)
                           and (model is _ANY or q[0].model == model))
            if not order:
                break
            for _, sid in order:
                if len(batch) >= max_rows:
                    break
                q = self._queues[sid]
                req = q[0]
                if batch and req.seconds > budget:
                    blocked.add(sid)
                    continue
                q.popleft()
                self._count -= 1
                if q:
                    self._front_since[sid] = max(q[0].created, time.monotonic())
                else:
                    del self._queues[sid]
                    del self._front_since[sid]
                budget -= req.seconds
                batch.append(req)
                per_session[sid] += 1
                if not q:
                    blocked.add(sid)
        return budget


class Scheduler:
    def __init__(self, pool: WorkerPool, on_result: ResultCallback, max_batch: int = 16,
                 max_wait_ms: float = 10.0, degrade_after_s: float = 0.8,
                 partial_budget_s: float = 3.0, clip_budget_s: float = 60.0,
                 on_batch: Callable[[list[DecodeRequest], float], None] | None = None,
                 max_session_rows: int = 4, backlog_batch_s: float = 1.0,
                 degrade_recover_s: float | None = None, degrade_hold_s: float = 0.0) -> None:
        self.on_batch = on_batch
        self.partial_budget = partial_budget_s
        self.pool = pool
        self.on_result = on_result
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.degrade_after = degrade_after_s
        # degraded: on past degrade_after_s; off once below degrade_recover_s (default: the
        # same) for degrade_hold_s (default 0: no hysteresis; the server passes its settings)
        self.shed = ShedGate(degrade_after_s, degrade_recover_s, degrade_hold_s)
        self.max_session_rows = max(1, max_session_rows)
        self.backlog_batch_s = backlog_batch_s
        self._seen: dict[str, float] = {}  # session id -> its latest submit (monotonic)
        self._session_models: dict[str, str] = {}  # session id -> its model (bind_model)
        self.finals = FairQueue()
        self.partials: dict[str, DecodeRequest] = {}
        self.clips = FairQueue()
        self.retries: deque[DecodeRequest] = deque()  # rows run alone, first
        self.clip_budget = clip_budget_s
        self.in_flight = 0
        self.stats = SchedulerStats()
        # (final+clip audio s, busy s attributed to it) of recent batches: admission's speed
        self._final_speed: deque[tuple[float, float]] = deque(maxlen=SPEED_WINDOW)
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    # ---- API for sessions --------------------------------------------------------------
    def bind_model(self, session_id: str, model: str | None) -> None:
        """Requests of `session_id` that name no model run on `model` (until drop_session)."""
        if model is None:
            self._session_models.pop(session_id, None)
        else:
            self._session_models[session_id] = model

    def submit(self, req: DecodeRequest) -> None:
        self._seen[req.session_id] = time.monotonic()
        if req.model is None:
            req.model = self._session_models.get(req.session_id) or self.pool.default_model
        if req.kind == "final":
            old = self.partials.get(req.session_id)
            if old is not None and old.segment_id <= req.segment_id:
                self._drop_partial(req.session_id)
            self._drop_retried_partials(req.session_id, req.segment_id)
        elif req.kind == "partial" and req.session_id in self.partials:
            self._drop_partial(req.session_id)
        if req.solo:
            self.retries.append(req)
        elif req.kind == "clip":
            self.clips.push(req)
        elif req.kind == "final":
            self.finals.push(req)
        else:
            self.partials[req.session_id] = req
        self._idle.clear()
        self._wake.set()

    def _drop_partial(self, session_id: str) -> None:
        """Discard a queued partial; its session hears (text None) so it may ask again."""
        self._dropped(self.partials.pop(session_id))

    def _dropped(self, req: DecodeRequest) -> None:
        self.stats.partials_dropped += 1
        self.on_result(req, None, None)

    def _drop_retried_partials(self, session_id: str, up_to_segment: int) -> None:
        stale = [r for r in self.retries if r.kind == "partial" and
                 r.session_id == session_id and r.segment_id <= up_to_segment]
        for req in stale:
            self.retries.remove(req)
            self._dropped(req)

    def drop_session(self, session_id: str) -> None:
        """Forget queued work of a session that is gone (in-flight work completes)."""
        self.partials.pop(session_id, None)
        self._seen.pop(session_id, None)
        self._session_models.pop(session_id, None)
        self.finals.remove_session(session_id)
        gone = self.clips.remove_session(session_id)
        gone += [r for r in self.retries if r.session_id == session_id]
        self.retries = deque(r for r in self.retries if r.session_id != session_id)
        for req in gone:
            if req.future is not None:
                req.future.cancel()
        self._check_idle()

    @property
    def queue_depth(self) -> int:
        return len(self.finals) + len(self.partials) + len(self.clips) + len(self.retries)

    def oldest_final_wait(self) -> float:
        """How far behind the server is on finals: the longest any session's next final
        (or a final being retried) has waited to be served (see FairQueue.front_wait).
        One client's own backlog does not count, so it degrades and refuses no one."""
        retried = [time.monotonic() - r.created for r in self.retries if r.kind == "final"]
        return max([self.finals.front_wait(), *retried])

    @property
    def degraded(self) -> bool:
        """Partials are shed: on when `oldest_final_wait()` exceeds `degrade_after_s`, off
        only once it has stayed below `degrade_recover_s` for `degrade_hold_s` (ShedGate;
        `shed.changes` counts the flips). Evaluated (and the state updated) on every read."""
        return self.shed.update(self.oldest_final_wait())

    def final_speed(self) -> float | None:
        """Measured audio seconds of finals and clips decoded per busy second of one worker
        (partials excluded: they are shed under load), over the last `SPEED_WINDOW` batches
        holding any; None until `CAPACITY_MIN_BATCHES` such batches were measured."""
        if len(self._final_speed) < CAPACITY_MIN_BATCHES:
            return None
        busy = sum(b for _, b in self._final_speed)
        return sum(a for a, _ in self._final_speed) / busy if busy > 0 else None

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
            if not self.queue_depth:
                self._wake.clear()
                await self._wake.wait()
            worker = await self.pool.acquire()  # waits while no worker is ready
            await self._fill_window()
            batch = self._take_batch()
            if not batch:
                await self.pool.release(worker)
                self._check_idle()
                continue
            self.in_flight += 1
            spawn(self._dispatch(worker, batch), "dispatch")

    async def _fill_window(self) -> None:
        """Wait up to max_wait for the queue to reach a full batch."""
        deadline = time.monotonic() + self.max_wait
        while self.queue_depth < self.max_batch and time.monotonic() < deadline:
            if self.retries:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), deadline - time.monotonic())
            except TimeoutError:
                return

    def _take_batch(self) -> list[DecodeRequest]:
        now = time.monotonic()
        self._seen = {sid: t for sid, t in self._seen.items() if now - t < ACTIVE_S}
        degraded = self.degraded  # judged before this batch takes the waiting finals
        while self.retries:
            req = self.retries.popleft()
            if req.kind == "partial" and degraded:
                self._dropped(req)
                continue
            return [req]
        if self.partials and degraded:
            for session_id in list(self.partials):
                self._drop_partial(session_id)
        model = self._pick_model(now)
        batch: list[DecodeRequest] = []
        rows: Counter = Counter()
        waiting = {r.session_id for r in self.partials.values() if r.model == model}
        for queue in (self.finals, self.clips):
            waiting.update(sid for sid in queue.sessions() if queue.front(sid).model == model)
        cap = self.max_session_rows if len(waiting) > 1 else None
        self.finals.take(batch, self.max_batch, rows, cap, model=model)
        if self.partials:
            budget = self.partial_budget
            for req in sorted(self.partials.values(), key=lambda r: r.created):
                if req.model != model:
                    continue
                if len(batch) >= self.max_batch or (budget < req.seconds and batch):
                    break
                budget -= req.seconds
                batch.append(self.partials.pop(req.session_id))
        if not any(r.kind == "final" and r.session_id not in self.finals.sessions()
                   for r in batch):  # no session has all its finals here: fill up
            self.finals.take(batch, self.max_batch, rows, model=model,
                             budget=self._backlog_budget(batch, model))
        self.clips.take(batch, self.max_batch, rows, budget=self.clip_budget, model=model)
        return batch

    def _pick_model(self, now: float) -> str | None:
        """The model whose queued work waited longest (see "Models" in the docstring)."""
        score: dict[str | None, float] = {}
        for model, since in self.finals.oldest_front().items():
            score[model] = now - since + FINAL_HEAD_START_S
        for req in self.partials.values():
            score[req.model] = max(score.get(req.model, -1.0), now - req.created)
        for model, since in self.clips.oldest_front().items():
            score[model] = max(score.get(model, -1.0), now - since)
        if not score:
            return None
        return max(score, key=lambda m: score[m])

    def _backlog_budget(self, batch: list[DecodeRequest], model: str | None = None) -> float:
        """Audio seconds a batch may still take from backlogs (step 4 of the docstring)."""
        live = set(self._seen) - set(self.finals.sessions())  # active, not backlogged
        speed = self.pool.speed(model)
        if speed is None or not live:
            return float("inf")
        return self.backlog_batch_s * speed - sum(r.seconds for r in batch)

    async def _dispatch(self, worker, batch: list[DecodeRequest]) -> None:
        started = time.monotonic()
        try:
            extra = {}  # a queue pool sends finals and partials down separate streams
            if getattr(self.pool, "prioritized", False):
                extra["urgent"] = any(r.kind != "partial" for r in batch)
            if any(r.prefix for r in batch):  # partials' draft prefixes (verified)
                extra["prefixes"] = [r.prefix for r in batch]
            decoded = await self.pool.run(worker, [r.audio for r in batch], batch[0].model,
                                          **extra)
        except WorkerLost as exc:
            log.warning("%s; %d request(s) go back to the queue", exc, len(batch))
            self._requeue(batch)
        except WorkerCrashed as exc:
            log.warning("%s; retrying its %d request(s) one by one", exc, len(batch))
            self._failed_batch(batch, crashed=True, error=CRASHED_TWICE)
        except BatchRejected as exc:
            log.warning("the engine refused a batch of %d: %s", len(batch), exc)
            self._failed_batch(batch, crashed=False, error=str(exc))
        except Exception as exc:  # a fault on our side: never lose the rows
            log.exception("batch of %d failed", len(batch))
            self._failed_batch(batch, crashed=False, error=f"{type(exc).__name__}: {exc}")
        else:
            self._delivered(batch, decoded.texts, decoded.busy_s, time.monotonic() - started,
                            decoded.errors, decoded.tokens)
        finally:
            self.in_flight -= 1
            self._wake.set()
            self._check_idle()

    def _delivered(self, batch: list[DecodeRequest], texts: list[str], busy_s: float,
                   wall_s: float, errors: list[str | None] | None = None,
                   tokens: list[tuple[int, ...]] | None = None) -> None:
        """Hand out a decoded batch (each row's `tokens` set on its request first, when the
        pool returned them); a row with an error (a queue pool's dead letter) is failed
        with it instead."""
        if self.on_batch is not None:
            self.on_batch(batch, wall_s)
        self.stats.batches += 1
        self.stats.batch_sizes.append(len(batch))
        self.stats.model_batches[batch[0].model or ""] += 1
        total = sum(r.seconds for r in batch)
        counted = sum(r.seconds for r in batch if r.kind != "partial")
        if counted > 0 and busy_s > 0:
            self._final_speed.append((counted, busy_s * counted / total))
        now = time.monotonic()
        for i, (req, text, error) in enumerate(
                zip(batch, texts, errors or [None] * len(batch), strict=True)):
            if error is not None:
                self._fail(req, error)
                continue
            if tokens is not None:
                req.tokens = tuple(tokens[i])
            if req.kind == "final":
                self.stats.finals += 1
                self.stats.final_latency.append(now - (req.speech_end or req.created))
            elif req.kind == "clip":
                self.stats.clips += 1
            else:
                self.stats.partials += 1
            self.on_result(req, text, None)

    def _failed_batch(self, batch: list[DecodeRequest], crashed: bool, error: str) -> None:
        """Retry every row alone; fail a row that failed alone (or crashed workers twice)."""
        self.stats.batch_failures += 1
        for req in batch:
            if crashed:
                req.crashes += 1
            if req.crashes >= MAX_CRASHES or (len(batch) == 1 and not crashed):
                self._fail(req, error)
            else:
                req.solo = True
                self.stats.requeued += 1
                self.retries.append(req)

    def _fail(self, req: DecodeRequest, error: str) -> None:
        if req.kind == "partial":
            self.stats.partials_dropped += 1
        else:
            self.stats.failed += 1
        self.on_result(req, None, error)

    def _requeue(self, batch: list[DecodeRequest]) -> None:
        """Put a blameless batch back where its rows came from, at the front."""
        for req in reversed(batch):
            if req.solo:
                self.retries.appendleft(req)
            elif req.kind == "final":
                self.finals.push_front(req)
            elif req.kind == "clip":
                self.clips.push_front(req)
            elif req.session_id in self.partials:  # a newer partial came meanwhile
                self._dropped(req)
            else:
                self.partials[req.session_id] = req

    def _check_idle(self) -> None:
        if self.in_flight == 0 and not self.queue_depth:
            self._idle.set()
