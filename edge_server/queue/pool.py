"""`RedisPool`: the scheduler's worker pool, when the workers sit behind Redis Streams.

Same interface as `edge_server.workers.WorkerPool` (acquire/run/release, ready_count,
idle_count, speed, deadline, serving, failed, ...), so the scheduler still decides which
rows go next and when; this pool only carries them:
- `acquire()` reserves one of `slots_per_worker` x live workers slots (bounded in-flight
  per live worker; waits while none is live, as the local pool waits while workers
  restart). `run(slot, audios, model, urgent)` XADDs every row as one task (finals stream
  when `urgent`, else partials; streams.py), awaits each row's result from this gateway's
  result stream, then releases the slot (`prefixes=`: partials' forced token prefixes,
  sent as each task's `pfx`; each result's `tok` comes back as `Decoded.tokens`). A row
  a worker dead-lettered comes back as that row's error (`Decoded.errors`); a crashed
  worker's rows are claimed by other workers in Redis (XAUTOCLAIM, worker_cli.py), so `run`
  never raises WorkerCrashed.
- Results: one reader task XREADGROUPs `earshot:results:{gateway}`, resolves the row's
  future, then XACKs and XDELs the entry. A result for a request id with no waiting
  future (a late duplicate from a worker presumed dead) is dropped and counted
  (`duplicates_dropped`): exactly once per row.
- Live workers: heartbeat hashes `earshot:worker:*` for a served model, scanned every
  `poll_s`; with them queue length and the oldest task's age (task streams hold only
  unacknowledged tasks: acked ones are deleted).
- Result stream lifetime: created here with a TTL of `results_ttl_s`, refreshed every
  `min(poll_s, results_ttl_s / 3)`; workers never create it (XADD NOMKSTREAM), so a
  SIGKILLed gateway's stream and its late results vanish on their own; `stop()` deletes it
  at once. Should it vanish while this gateway lives (a stall past the TTL, a flushed
  Redis), the rows in flight fail as on a lost Redis and the stream is created again.
- Redis lost (restart, network): every row in flight fails with "decode queue lost"
  (`BatchRejected`: the scheduler retries rows alone, then reports the error), `failed` is
  True (healthz 503 "failed", admission refuses), and the pool reconnects every second,
  re-creating its consumer groups (a Redis restarted without persistence has none).
- `workers` > 0: that many local `earshot-worker` processes per served model are started
  and restarted when they exit (the gateway machine decodes too).
All methods run on the event loop's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import subprocess
import sys
import time
import uuid
from collections import deque
from dataclasses import dataclass

import numpy as np

from edge_server.queue import streams as S
from edge_server.workers import (
    SPEED_WINDOW,
    BatchRejected,
    Decoded,
    hang_deadline,
    measured_speed,
)

log = logging.getLogger(__name__)

QUEUE_LOST = "decode queue lost"


@dataclass(frozen=True)
class QueueConfig:
    url: str
    model_ids: tuple[str, ...]  # served models; the first is the default
    workers: int = 0  # local earshot-worker processes per model
    device: str = "auto"
    threads: int | None = None
    noop: bool = False
    local_batch: int = 8
    slots_per_worker: int = 1
    poll_s: float = 1.0
    deadline_floor_s: float = 5.0
    deadline_cap_s: float = 20.0
    deadline_factor: float = 4.0
    results_ttl_s: float = 60.0  # this gateway's result stream expires this long after it dies


@dataclass
class Slot:
    released: bool = False


class RedisPool:
    prioritized = True  # the scheduler passes run(..., urgent=): finals vs partials streams

    def __init__(self, config: QueueConfig) -> None:
        self.config = config
        self.gateway = uuid.uuid4().hex[:12]
        self.results = S.result_stream(self.gateway)
        self._ids = itertools.count()
        self._futures: dict[str, asyncio.Future] = {}
        self._used = 0
        self._cond = asyncio.Condition()
        self._tasks: list[asyncio.Task] = []
        self._local: list[subprocess.Popen] = []
        self._measured: deque[tuple[float, float]] = deque(maxlen=SPEED_WINDOW)
        self._measured_by_model: dict[str, deque[tuple[float, float]]] = {}
        self._closing = False
        self.r = None
        self.live: dict[str, dict[str, str]] = {}  # worker id -> heartbeat fields
        self.lost: str | None = None  # why Redis is unreachable now
        self.ever_ready = False
        self.restart_count = 0  # workers whose heartbeat vanished
        self.duplicates_dropped = 0
        self.dead_letters = 0
        self.queue_length = 0
        self.oldest_task_age_s = 0.0
        self.info: dict = {}

    # ---- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        """Connect (RuntimeError saying why not: refused, wrong password), create the
        consumer groups, start the reader, the watcher and any local workers. Returns
        without waiting for a worker: `ever_ready` turns True at the first heartbeat."""
        import redis
        import redis.asyncio as aioredis

        try:
            self.r = aioredis.Redis.from_url(self.config.url, socket_connect_timeout=5)
            await self.r.ping()
            await self._create_groups()
        except (redis.RedisError, OSError) as exc:
            raise RuntimeError(f"Redis at {S.redact(self.config.url)}: "
                               f"{type(exc).__name__}: {exc}") from None
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._read_results(), name="queue-results"),
                       loop.create_task(self._watch(), name="queue-watch")]
        for model in self.config.model_ids:
            for i in range(self.config.workers):
                self._tasks.append(loop.create_task(self._local_worker(model, i),
                                                    name=f"local-worker-{model}-{i}"))
        log.info("decode queue %s: gateway %s, models %s", S.redact(self.config.url),
                 self.gateway, ", ".join(self.config.model_ids))

    async def _create_groups(self) -> None:
        import redis

        streams = [S.task_stream(m, u) for m in self.config.model_ids for u in (True, False)]
        for stream, group in [*((s, S.GROUP) for s in streams), (self.results, S.RESULT_GROUP)]:
            try:
                await self.r.xgroup_create(stream, group, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        await self.r.pexpire(self.results, self._ttl_ms)

    async def stop(self) -> None:
        self._closing = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for proc in self._local:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._local:
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(proc.wait, 10)
            if proc.poll() is None:
                proc.kill()
        self._fail_all("gateway stopping")
        if self.r is not None:
            with contextlib.suppress(Exception):
                await self.r.delete(self.results)
            with contextlib.suppress(Exception):
                await self.r.aclose()

    async def _local_worker(self, model: str, index: int) -> None:
        """Run one local earshot-worker; start it again when it exits (1 s later)."""
        c = self.config
        cmd = [sys.executable, "-m", "edge_server.queue.worker_cli", "--queue", c.url,
               "--model", model, "--device", c.device, "--batch", str(c.local_batch),
               "--gateway-pid", str(os.getpid())]  # a SIGKILLed gateway leaves none behind
        if c.threads:
            cmd += ["--threads", str(c.threads)]
        if c.noop:
            cmd.append("--noop-engine")
        for run in itertools.count():
            if self._closing:
                return
            proc = subprocess.Popen([*cmd, "--id", f"{self.gateway}-local-{model}-{index}.{run}"])
            self._local.append(proc)
            code = await asyncio.to_thread(proc.wait)
            self._local.remove(proc)
            if self._closing:
                return
            log.warning("local worker %d of %s exited (%s); restarting", index, model, code)
            await asyncio.sleep(1.0)

    # ---- background -------------------------------------------------------------------
    async def _read_results(self) -> None:
        import redis

        while not self._closing:
            try:
                reply = await self.r.xreadgroup(S.RESULT_GROUP, self.gateway,
                                                {self.results: ">"}, count=512, block=1000)
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                await self._lose(exc)
                continue
            except redis.ResponseError as exc:  # NOGROUP: Redis came back empty
                log.warning("result stream: %s; re-creating consumer groups", exc)
                self._fail_all(f"{QUEUE_LOST}: {exc}")  # their results went with the stream
                await self._reconnect()
                continue
            ids = []
            for _, entries in reply or ():
                for eid, fields in entries:
                    ids.append(eid)
                    self._resolve(fields)
            if ids:
                with contextlib.suppress(redis.RedisError, OSError):
                    await self.r.pipeline().xack(self.results, S.RESULT_GROUP, *ids).xdel(
                        self.results, *ids).execute()

    def _resolve(self, fields: dict) -> None:
        rid = S.text_field(fields, "rid", "")
        future = self._futures.pop(rid, None)
        if future is None or future.done():
            self.duplicates_dropped += 1
            log.info("dropped a duplicate or late result for %s", rid)
            return
        error = S.text_field(fields, "err", "") or None
        if error is not None and "dead-lettered" in error:
            self.dead_letters += 1
        try:
            tokens = S.decode_ids(fields, "tok")
        except S.BadTask:
            tokens = ()
        future.set_result((S.text_field(fields, "text", ""), error,
                           float(S.text_field(fields, "busy", "0")), tokens))

    async def _lose(self, exc: BaseException) -> None:
        if self.lost is None:
            log.error("lost Redis at %s: %s; rows in flight fail, reconnecting",
                      S.redact(self.config.url), exc)
        self.lost = f"{QUEUE_LOST}: {exc}"
        self._fail_all(self.lost)
        await asyncio.sleep(1.0)
        await self._reconnect()

    async def _reconnect(self) -> None:
        import redis

        try:
            await self.r.ping()
            await self._create_groups()
        except (redis.RedisError, OSError) as exc:
            self.lost = f"{QUEUE_LOST}: {exc}"
            return
        if self.lost is not None:
            log.warning("Redis is back at %s", S.redact(self.config.url))
        self.lost = None

    def _fail_all(self, reason: str) -> None:
        futures, self._futures = self._futures, {}
        for future in futures.values():
            if not future.done():
                future.set_exception(BatchRejected(reason))

    async def _watch(self) -> None:
        """Live workers (heartbeats) and queue length / oldest task age, every poll_s."""
        import redis

        while not self._closing:
            try:
                await self._keep_results()
                await self._poll()
            except (redis.RedisError, OSError) as exc:
                if self.lost is None:
                    log.warning("queue watch: %s", exc)
            await asyncio.sleep(min(self.config.poll_s, self.config.results_ttl_s / 3))

    @property
    def _ttl_ms(self) -> int:
        return max(1, int(self.config.results_ttl_s * 1000))

    async def _keep_results(self) -> None:
        """Refresh the result stream's TTL; if it is gone, fail the rows in flight (their
        results went with it) and create it again."""
        if self.lost is None and not await self.r.pexpire(self.results, self._ttl_ms):
            log.error("result stream %s vanished (expired or flushed); rows in flight fail",
                      self.results)
            self._fail_all(f"{QUEUE_LOST}: result stream vanished")
            await self._create_groups()

    async def _poll(self) -> None:
        live: dict[str, dict[str, str]] = {}
        async for key in self.r.scan_iter(match=S.WORKER_PATTERN, count=100):
            fields = await self.r.hgetall(key)
            info = {k.decode(): v.decode() for k, v in fields.items()}
            if info.get("model") in self.config.model_ids:
                live[info.get("id", key.decode())] = info
        gone = set(self.live) - set(live)
        if gone:
            self.restart_count += len(gone)
            log.warning("worker(s) gone: %s", ", ".join(sorted(gone)))
        for wid in set(live) - set(self.live):
            w = live[wid]
            log.info("worker %s live: %s on %s (%s), batch %s", wid, w.get("model"),
                     w.get("host"), w.get("device") or w.get("provider"), w.get("batch"))
        self.live = live
        if live:
            self.ever_ready = True
            first = next(iter(live.values()))
            self.info = {"device": first.get("device"), "provider": first.get("provider"),
                         "model": first.get("model"), "models": list(self.config.model_ids)}
        length, oldest = 0, None
        for model in self.config.model_ids:
            for urgent in (True, False):
                stream = S.task_stream(model, urgent)
                length += await self.r.xlen(stream)
                first = await self.r.xrange(stream, count=1)
                if first:
                    ms = int(first[0][0].split(b"-")[0])
                    oldest = ms if oldest is None else min(oldest, ms)
        self.queue_length = length
        self.oldest_task_age_s = max(0.0, time.time() - oldest / 1000) if oldest else 0.0
        async with self._cond:
            self._cond.notify_all()

    # ---- state -------------------------------------------------------------------------
    @property
    def ready_count(self) -> int:
        """Live workers (fresh heartbeat) serving one of this gateway's models."""
        return 0 if self.lost else len(self.live)

    @property
    def size(self) -> int:
        """Workers counted for capacity: the live ones, on every machine."""
        return self.ready_count

    @property
    def slots(self) -> int:
        return self.ready_count * self.config.slots_per_worker

    @property
    def idle_count(self) -> int:
        return max(0, self.slots - self._used)

    @property
    def restarting(self) -> int:
        return 0

    @property
    def failed(self) -> bool:
        """Redis is unreachable (work submitted now cannot be carried)."""
        return self.lost is not None

    @property
    def serving(self) -> bool:
        return self.ever_ready and not self.failed and not self._closing

    @property
    def default_model(self) -> str | None:
        return self.config.model_ids[0] if self.config.model_ids else None

    def speed(self, model: str | None = None) -> float | None:
        """As WorkerPool.speed: audio seconds per busy second of one worker (recent rows)."""
        measured = self._measured if model is None else self._measured_by_model.get(model, ())
        return measured_speed(measured)

    def deadline(self, audio_s: float, model: str | None = None) -> float:
        return hang_deadline(self.config, audio_s, self.speed(model))

    def pids(self) -> list[int]:
        """Local worker processes (remote ones run on other machines)."""
        return [p.pid for p in self._local if p.poll() is None]

    def queue_stats(self) -> dict:
        return {"gateway": self.gateway, "url": S.redact(self.config.url),
                "live_workers": len(self.live), "queue_length": self.queue_length,
                "oldest_task_age_s": round(self.oldest_task_age_s, 3),
                "in_flight_rows": len(self._futures), "dead_letters": self.dead_letters,
                "duplicates_dropped": self.duplicates_dropped, "lost": self.lost,
                "workers": sorted(self.live.values(), key=lambda w: w.get("id", ""))}

    # ---- running batches ---------------------------------------------------------------
    async def wait_idle(self) -> None:
        async with self._cond:
            await self._cond.wait_for(lambda: self.idle_count > 0)

    async def acquire(self) -> Slot:
        """Reserve an in-flight slot (waits while every live worker's slots are taken, or
        no worker is live)."""
        while True:
            await self.wait_idle()
            if self.idle_count > 0:
                self._used += 1
                return Slot()

    async def release(self, slot: Slot) -> None:
        if not slot.released:
            slot.released = True
            self._used -= 1
        async with self._cond:
            self._cond.notify_all()

    async def run(self, slot: Slot, audios: list[np.ndarray], model: str | None = None,
                  urgent: bool = True, prefixes: list[tuple[int, ...]] | None = None) -> Decoded:
        """Send the rows as tasks, await their results, release the slot. Raises
        BatchRejected when Redis is lost (before or while the rows are in flight)."""
        import redis

        model = model or self.default_model
        loop = asyncio.get_running_loop()
        batch = next(self._ids)
        rids = [f"{batch}.{i}" for i in range(len(audios))]
        futures = [loop.create_future() for _ in audios]
        try:
            if self.lost:
                raise BatchRejected(self.lost)
            stream = S.task_stream(model, urgent)
            pipe = self.r.pipeline(transaction=False)
            for i, (rid, audio, future) in enumerate(zip(rids, audios, futures, strict=True)):
                self._futures[rid] = future
                pipe.xadd(stream, S.encode_task(self.gateway, rid, model, audio,
                                                prefixes[i] if prefixes else ()))
            try:
                await pipe.execute()
            except (redis.RedisError, OSError) as exc:
                for rid in rids:
                    self._futures.pop(rid, None)
                raise BatchRejected(f"{QUEUE_LOST}: {exc}") from None
            results = await asyncio.gather(*futures)
        finally:
            for rid in rids:
                self._futures.pop(rid, None)
            await self.release(slot)
        texts = [t if e is None else "" for t, e, *_ in results]
        errors = [e for _, e, *_ in results]
        busy = sum(r[2] for r in results)
        audio_s = sum(len(a) for a, (_, e, *_) in zip(audios, results, strict=True)
                      if e is None) / S.SAMPLE_RATE
        if busy > 0 and audio_s > 0:
            self._measured.append((audio_s, busy))
            self._measured_by_model.setdefault(model, deque(maxlen=SPEED_WINDOW)).append(
                (audio_s, busy))
        return Decoded(texts, busy, errors if any(e is not None for e in errors) else None,
                       tokens=[r[3] for r in results])
