"""Scheduler policy with a real worker process (no-op engine): ordering, coalescing, shedding,
fairness across sessions, and recovery from engine exceptions, crashes and hangs (the
worker's fault-injection hook, see edge_server/worker_main.py)."""

from __future__ import annotations

import asyncio
import os
import signal

import numpy as np
import pytest

from edge_server.scheduler import DecodeRequest, Scheduler
from edge_server.workers import BatchRejected, Decoded, WorkerConfig, WorkerPool


def req(session: str, seg: int, kind: str) -> DecodeRequest:
    return DecodeRequest(session, seg, kind, np.ones(1600, np.float32))


async def with_scheduler(body, config: WorkerConfig | None = None, **kw):
    pool = WorkerPool(config or WorkerConfig(noop=True, workers=1))
    await pool.start()
    results: list = []
    sched = Scheduler(pool, lambda r, text, err: results.append((r, text, err)), **kw)
    try:
        return await body(sched, pool, results)
    finally:
        await sched.stop()
        await pool.stop()


def test_newer_partial_replaces_older_and_finals_go_first():
    async def body(sched, pool, results):
        held = await pool.acquire()  # keep the only worker busy while we queue
        sched.start()
        old, new, final = req("a", 0, "partial"), req("a", 0, "partial"), req("b", 3, "final")
        sched.submit(old)
        sched.submit(new)
        sched.submit(final)
        assert results == [(old, None, None)]  # coalesced away, and told so
        await pool.release(held)
        await asyncio.wait_for(sched.wait_idle(), 10)
        decoded = [(r.session_id, r.kind) for r, text, _ in results[1:]]
        assert decoded == [("b", "final"), ("a", "partial")]
        assert sched.stats.batch_sizes[-1] == 2

    asyncio.run(with_scheduler(body))


def test_final_for_a_segment_cancels_its_queued_partial():
    async def body(sched, pool, results):
        held = await pool.acquire()
        sched.start()
        partial = req("a", 2, "partial")
        sched.submit(partial)
        sched.submit(req("a", 2, "final"))
        assert results == [(partial, None, None)]
        await pool.release(held)
        await asyncio.wait_for(sched.wait_idle(), 10)
        assert [(r.kind, t) for r, t, _ in results[1:]] == [("final", "speech")]

    asyncio.run(with_scheduler(body))


def test_partials_are_shed_while_finals_wait_too_long():
    async def body(sched, pool, results):
        held = await pool.acquire()
        sched.start()
        sched.submit(req("a", 0, "final"))
        sched.submit(req("b", 0, "partial"))
        await asyncio.sleep(0.15)  # the final has now waited past degrade_after_s
        assert sched.degraded
        await pool.release(held)
        await asyncio.wait_for(sched.wait_idle(), 10)
        outcome = {(r.session_id, r.kind): t for r, t, _ in results}
        assert outcome == {("a", "final"): "speech", ("b", "partial"): None}
        assert sched.stats.partials_dropped == 1

    asyncio.run(with_scheduler(body, degrade_after_s=0.1))


def test_clips_fill_after_finals_and_partials_within_their_budget():
    async def body(sched, pool, results):
        held = await pool.acquire()
        sched.start()
        clips = [DecodeRequest("clip-1", i, "clip", np.ones(16_000 * 4, np.float32))
                 for i in range(5)]  # 4 s each, budget 10 s: two per batch (plus the rest)
        for c in clips:
            sched.submit(c)
        sched.submit(req("a", 0, "partial"))
        sched.submit(req("b", 0, "final"))
        await pool.release(held)
        await asyncio.wait_for(sched.wait_idle(), 10)
        order = [(r.session_id, r.kind) for r, _, _ in results]
        assert order[:4] == [("b", "final"), ("a", "partial"), ("clip-1", "clip"),
                             ("clip-1", "clip")]
        assert list(sched.stats.batch_sizes) == [4, 2, 1]
        assert sched.stats.clips == 5 and sched.queue_depth == 0

    asyncio.run(with_scheduler(body, clip_budget_s=10.0))


def test_dropping_a_clip_job_cancels_its_queued_requests():
    async def body(sched, pool, results):
        held = await pool.acquire()
        sched.start()
        loop = asyncio.get_running_loop()
        kept = DecodeRequest("clip-2", 0, "clip", np.ones(1600, np.float32),
                             future=loop.create_future())
        gone = DecodeRequest("clip-1", 0, "clip", np.ones(1600, np.float32),
                             future=loop.create_future())
        sched.submit(gone)
        sched.submit(kept)
        sched.drop_session("clip-1")
        assert gone.future.cancelled() and sched.queue_depth == 1
        await pool.release(held)
        await asyncio.wait_for(sched.wait_idle(), 10)
        assert [r for r, _, _ in results] == [kept]

    asyncio.run(with_scheduler(body))


def test_a_flooding_session_cannot_push_ahead_of_another_sessions_final():
    """100 finals from one session queued; another session's single final, submitted while
    the flood's first batch is decoding, goes into the very next batch, which the flood
    fills only up to its per-session cap."""
    batches: list[list[str]] = []

    async def body(sched, pool, results):
        quiet = req("quiet", 0, "final")

        def on_batch(batch, seconds):
            batches.append([r.session_id for r in batch])
            if len(batches) == 1:  # the flood's first batch is done decoding: submit now
                sched.submit(quiet)

        sched.on_batch = on_batch
        held = await pool.acquire()
        sched.start()
        for i in range(100):
            sched.submit(req("flood", i, "final"))
        await pool.release(held)
        await asyncio.wait_for(sched.wait_idle(), 30)
        assert batches[0] == ["flood"] * 16
        assert "quiet" in batches[1], batches[:3]
        assert len(batches[1]) == 5  # 4 (the flood's cap) + 1: it stays small, decodes fast
        flood = [r.segment_id for r, _, _ in results if r.session_id == "flood"]
        assert flood == list(range(100))  # a session's own finals keep their order
        assert sched.stats.finals == 101 and sched.queue_depth == 0

    asyncio.run(with_scheduler(body))


def test_a_session_takes_at_most_its_row_cap_while_others_wait():
    """With others' partials waiting, the flooder gets `max_session_rows` rows first; what
    is left after their partials is filled with more of its finals."""
    async def body(sched, pool, results):
        held = await pool.acquire()
        sched.start()
        for i in range(100):
            sched.submit(req("flood", i, "final"))
        for n in range(6):
            sched.submit(req(f"talker-{n}", 0, "partial"))
        await pool.release(held)
        await asyncio.wait_for(sched.wait_idle(), 30)
        first = [(r.session_id, r.kind) for r, _, _ in results[:16]]
        assert sorted(s for s, kind in first if kind == "partial") == [
            f"talker-{n}" for n in range(6)]
        assert sum(1 for s, _ in first if s == "flood") == 10  # 4 capped + 6 to fill up
        assert sched.stats.batch_sizes[0] == 16

    asyncio.run(with_scheduler(body, max_session_rows=4))


def test_one_sessions_backlog_does_not_degrade_the_others():
    """A flood's own queue is not the server being behind: once its finals are being
    served, other sessions' partials are decoded, not shed."""
    seen: list = []

    async def body(sched, pool, results):
        talker = req("talker", 0, "partial")

        def on_batch(batch, seconds):
            if not seen:
                seen.append(sched.degraded)
                sched.submit(talker)

        sched.on_batch = on_batch
        held = await pool.acquire()
        sched.start()
        for i in range(100):
            sched.submit(req("flood", i, "final"))
        await asyncio.sleep(0.3)
        assert sched.degraded  # nobody has been served for 0.3 s: truly behind
        await pool.release(held)
        await asyncio.wait_for(sched.wait_idle(), 30)
        assert seen == [False]
        assert [(t, e) for r, t, e in results if r is talker] == [("speech", None)]

    asyncio.run(with_scheduler(body, degrade_after_s=0.2))


def test_finals_are_taken_oldest_session_first_one_per_round():
    async def body(sched, pool, results):
        held = await pool.acquire()
        sched.start()
        for i in range(3):
            sched.submit(req("a", i, "final"))
        for i in range(3):
            sched.submit(req("b", i, "final"))
        await pool.release(held)
        await asyncio.wait_for(sched.wait_idle(), 10)
        order = [(r.session_id, r.segment_id) for r, _, _ in results]
        assert order == [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2), ("b", 2)]

    asyncio.run(with_scheduler(body, max_session_rows=1))


def loud(session: str, seg: int, kind: str) -> DecodeRequest:
    """A request the fault-injected workers below fail on (a sample above `req`'s 1.0)."""
    audio = np.ones(1600, np.float32)
    audio[800] = 2.0
    return DecodeRequest(session, seg, kind, audio)


def test_an_engine_exception_is_retried_row_by_row_and_fails_only_its_row(monkeypatch):
    monkeypatch.setenv("EARSHOT_WORKER_FAULT", "raise-if-peak-above=1.5")

    async def body(sched, pool, results):
        held = await pool.acquire()
        sched.start()
        good = [req("a", 0, "final"), req("b", 0, "final"), req("c", 0, "partial")]
        bad = loud("d", 0, "final")
        for r in (good[0], bad, good[1], good[2]):
            sched.submit(r)
        await pool.release(held)
        await asyncio.wait_for(sched.wait_idle(), 30)
        outcome = {r.session_id: (t, e) for r, t, e in results}
        assert outcome["a"] == outcome["b"] == outcome["c"] == ("speech", None)
        assert outcome["d"][0] is None and "injected engine fault" in outcome["d"][1]
        assert sched.stats.batch_failures == 2  # the batch of 4, then the bad row alone
        assert sched.stats.requeued == 4 and sched.stats.failed == 1
        assert pool.restart_count == 0  # an engine exception leaves the worker alive

    asyncio.run(with_scheduler(body))


def test_a_crashed_batch_reports_its_partial_and_fails_only_the_poison(monkeypatch):
    """The partial in flight on a dead worker is answered (never left hanging): retried
    alone, and as it kills the worker again, reported with an error."""
    monkeypatch.setenv("EARSHOT_WORKER_FAULT", "crash-if-peak-above=1.5")

    async def body(sched, pool, results):
        held = await pool.acquire()
        sched.start()
        final, poison = req("a", 0, "final"), loud("b", 0, "partial")
        sched.submit(final)
        sched.submit(poison)
        await pool.release(held)
        await asyncio.wait_for(sched.wait_idle(), 60)
        outcome = {r.session_id: (t, e) for r, t, e in results}
        assert outcome["a"] == ("speech", None)
        assert outcome["b"][0] is None and "twice" in outcome["b"][1]
        assert poison.crashes == 2 and pool.restart_count == 2

    asyncio.run(with_scheduler(body))


def test_a_hung_batch_is_killed_at_its_deadline_and_retried(monkeypatch):
    monkeypatch.setenv("EARSHOT_WORKER_FAULT", "hang-if-peak-above=1.5")

    async def body(sched, pool, results):
        held = await pool.acquire()
        sched.start()
        good, hung = req("a", 0, "final"), loud("b", 0, "final")
        sched.submit(good)
        sched.submit(hung)
        await pool.release(held)
        await asyncio.wait_for(sched.wait_idle(), 60)
        outcome = {r.session_id: (t, e) for r, t, e in results}
        assert outcome["a"] == ("speech", None)
        assert outcome["b"][0] is None and "twice" in outcome["b"][1]
        assert pool.restart_count == 2

    asyncio.run(with_scheduler(body, config=WorkerConfig(
        noop=True, workers=1, deadline_floor_s=0.5, deadline_cap_s=1.5)))


def test_the_hang_deadline_follows_the_measured_speed_within_floor_and_cap():
    async def body(sched, pool, results):
        assert pool.speed() is None and pool.deadline(1.0) == 7.0  # unmeasured: the cap
        sched.start()
        for i in range(5):
            sched.submit(req("a", i, "final"))
            await asyncio.wait_for(sched.wait_idle(), 10)
        # the no-op engine decodes in microseconds: any batch gets the floor
        assert pool.speed() > 1000 and pool.deadline(300.0) == 2.0

    asyncio.run(with_scheduler(body, config=WorkerConfig(
        noop=True, workers=1, deadline_floor_s=2.0, deadline_cap_s=7.0)))


def test_a_worker_dead_while_idle_is_replaced_and_queued_work_waits_for_it():
    async def body(sched, pool, results):
        sched.start()
        (pid,) = pool.pids()
        os.kill(pid, signal.SIGKILL)
        while pool.ready_count:  # its sentinel closes: replaced without any batch failing
            await asyncio.sleep(0.01)
        assert pool.restarting == 1 and pool.serving
        waiting = req("a", 0, "final")
        sched.submit(waiting)  # no worker ready: it waits, it does not fail
        await asyncio.wait_for(sched.wait_idle(), 60)
        assert results == [(waiting, "speech", None)] and waiting.crashes == 0
        assert pool.restart_count == 1 and pool.pids() != [pid]
        assert sched.stats.batch_failures == 0

    asyncio.run(with_scheduler(body))


def test_admission_speed_counts_finals_and_clips_only():
    async def body(sched, pool, results):
        sched.start()
        for i in range(25):
            sched.submit(req(f"s{i}", 0, "partial"))
            await asyncio.wait_for(sched.wait_idle(), 10)
        assert sched.stats.partials == 25 and sched.final_speed() is None
        for i in range(20):
            sched.submit(req("a", i, "final"))
            await asyncio.wait_for(sched.wait_idle(), 10)
        assert sched.final_speed() is not None

    asyncio.run(with_scheduler(body))


class StubPool:
    """Stands in for WorkerPool where a measured speed must be chosen: one always-free
    worker that decodes instantly; `speed()` as given (audio s per busy s)."""

    def __init__(self, speed: float) -> None:
        self._speed = speed
        self.batches: list[list[int]] = []
        self.default_model = None

    async def acquire(self) -> object:
        return object()

    async def release(self, worker: object) -> None:
        pass

    def speed(self, model: str | None = None) -> float:
        return self._speed

    async def run(self, worker: object, audios: list, model: str | None = None) -> Decoded:
        self.batches.append([len(a) for a in audios])
        return Decoded(["speech"] * len(audios), 0.001)


def test_a_backlog_batch_is_cut_to_its_decode_time_budget_while_others_are_live():
    async def first_batch(with_talker: bool) -> list[DecodeRequest]:
        pool = StubPool(speed=10.0)  # 1 s of decode time = 10 s of audio
        results: list = []
        sched = Scheduler(pool, lambda r, t, e: results.append(r), max_session_rows=4,
                          backlog_batch_s=1.0)
        for i in range(100):
            sched.submit(DecodeRequest("flood", i, "final", np.ones(16_000, np.float32)))
        if with_talker:
            sched.submit(DecodeRequest("talker", 0, "partial", np.ones(16_000, np.float32)))
        sched.start()
        await asyncio.wait_for(sched.wait_idle(), 30)
        await sched.stop()
        return results[: len(pool.batches[0])]

    alone = asyncio.run(first_batch(False))
    assert len(alone) == 16  # nobody else is live: a full batch, for throughput
    shared = asyncio.run(first_batch(True))
    assert [r.session_id for r in shared].count("talker") == 1
    assert sum(r.seconds for r in shared) == 10.0  # 4 (cap) + 1 partial + 5 to the budget


def test_a_batch_holds_one_model_and_one_models_backlog_does_not_starve_the_other():
    """Two models in the workers: batches never mix them, requests without a model take
    their session's, and a flood on one model lets the other's final through at once."""
    batches: list[list[DecodeRequest]] = []

    async def body(sched, pool, results):
        held = await pool.acquire()
        sched.start()
        sched.bind_model("live", "b")
        for i in range(12):
            sched.submit(DecodeRequest("flood", i, "final", np.ones(1600, np.float32),
                                       model="a"))
        sched.submit(req("live", 0, "final"))  # no model: its session's ("b")
        sched.submit(req("other", 0, "partial"))  # no model, no binding: the default ("a")
        await pool.release(held)
        await asyncio.wait_for(sched.wait_idle(), 10)
        assert all(len({r.model for r in b}) == 1 for b in batches)
        models = {(r.session_id, r.kind): r.model for b in batches for r in b}
        assert models[("live", "final")] == "b" and models[("other", "partial")] == "a"
        live_batch = next(i for i, b in enumerate(batches) if b[0].session_id == "live")
        assert live_batch <= 1, [[r.session_id for r in b] for b in batches]
        assert len(batches) >= 4  # the flood took several batches of 4
        assert dict(sched.stats.model_batches) == {"a": len(batches) - 1, "b": 1}
        assert all(text == "speech" and err is None for _, text, err in results)

        worker = await pool.acquire()
        with pytest.raises(BatchRejected, match=r"'c' is not loaded .*loaded: a, b"):
            await pool.run(worker, [np.ones(1600, np.float32)], "c")

    asyncio.run(with_scheduler(body, config=WorkerConfig(noop=True, workers=1,
                                                         model_ids=("a", "b")),
                               max_batch=4, on_batch=lambda b, _: batches.append(list(b))))
