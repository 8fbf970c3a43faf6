"""Scheduler policy with a real worker process (no-op engine): ordering, coalescing, shedding."""

from __future__ import annotations

import asyncio

import numpy as np

from edge_server.scheduler import DecodeRequest, Scheduler
from edge_server.workers import WorkerConfig, WorkerPool


def req(session: str, seg: int, kind: str) -> DecodeRequest:
    return DecodeRequest(session, seg, kind, np.ones(1600, np.float32))


async def with_scheduler(body, **kw):
    pool = WorkerPool(WorkerConfig(noop=True, workers=1))
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
