"""RedisPool end to end: a real redis-server, two `earshot-worker` processes, a real
`earshot-server --queue` gateway; a worker SIGKILLed while it holds tasks loses nothing."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import pytest

from edge_server.evaluation import word_error_rate
from tests.conftest import DEV, dev_rows, speech_with_pauses
from tests.redis_server import RedisServer, start_worker
from tests.server_harness import start_server, stream_audio

ROWS = dev_rows(("pocketsphinx-testdata",))[:6]
WORKER = ("--model", "moonshine-tiny-en", "--device", "cpu", "--threads", "1", "--batch", "4")


@pytest.fixture(scope="module")
def cluster():
    redis = RedisServer.start()
    workers, server, redises = [], None, [redis]
    try:
        workers = [start_worker(redis.url, *WORKER) for _ in range(2)]
        server = start_server("--queue", redis.url)
        yield redis, workers, server, redises
    finally:
        if server is not None:
            assert server.stop() == 0
        for w in workers:
            w.stop()
        for r in redises:
            r.stop()


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read().decode()


def test_streams_through_two_remote_workers_transcribe_right(cluster):
    redis, workers, server, _ = cluster
    health = server.health()
    assert health["status"] == "ready" and health["workers_ready"] == 2
    assert health["worker_pids"] == []  # no local worker: --queue without --workers
    assert {w["id"] for w in health["queue"]["workers"]} == {w.worker_id for w in workers}
    audio = speech_with_pauses([DEV / r["path"] for r in ROWS], pause_s=0.8)
    finals, _ = asyncio.run(stream_audio(server.url, audio))
    assert [f.segment for f in finals] == list(range(len(ROWS)))
    score = word_error_rate([r["transcript"] for r in ROWS], [f.text for f in finals])
    assert score.wer < 0.1 and not any(f.error for f in finals)
    metrics = _get(server.url + "/metrics")
    assert "earshot_queue_workers_live 2.0" in metrics and "earshot_queue_up 1.0" in metrics
    stats = json.loads(_get(server.url + "/api/stats"))
    assert stats["workers"]["live"] == 2 and len(stats["workers"]["remote"]) == 2
    # every task was acknowledged and deleted, every result delivered and deleted
    client = redis.client()
    assert client.xlen("earshot:moonshine-tiny-en:finals") == 0
    assert client.xlen(f"earshot:results:{health['queue']['gateway']}") == 0


def test_sigkill_of_a_worker_holding_tasks_loses_and_duplicates_no_final(cluster):
    redis, workers, server, _ = cluster
    client = redis.client()
    audio = speech_with_pauses([DEV / r["path"] for r in ROWS], pause_s=0.8)
    killed: list = []
    killed_task: list = []

    async def kill_a_busy_worker(_client, sent):
        if killed or sent < len(audio) * 0.3:
            return
        for stream in ("earshot:moonshine-tiny-en:finals", "earshot:moonshine-tiny-en:partials"):
            for row in client.xpending_range(stream, "workers", "-", "+", 10):
                victim = next(w for w in workers if w.worker_id == row["consumer"].decode())
                victim.kill()  # SIGKILL while it holds this task, unacknowledged
                killed.append(victim)
                killed_task.append((stream, row))
                return
        await asyncio.sleep(0.005)

    events: list = []
    finals, _ = asyncio.run(stream_audio(server.url, audio, during=kill_a_busy_worker,
                                         events=events))
    assert killed, "no worker was ever caught holding a task"
    assert [f.segment for f in finals] == list(range(len(ROWS)))
    assert [e["segment"] for _, e in events if e["type"] == "final"] == list(range(len(ROWS)))
    score = word_error_rate([r["transcript"] for r in ROWS], [f.text for f in finals])
    assert score.wer < 0.1 and not any(f.error for f in finals)
    survivor = next(w for w in workers if w not in killed)
    assert asyncio.run(_wait_for(lambda: server.health()["workers_ready"] == 1))
    assert asyncio.run(_wait_for(lambda: any("claimed task" in ln for ln in survivor.log))), (
        killed_task, "".join(survivor.log[-20:]))  # XAUTOCLAIM took the dead worker's task
    health = server.health()
    assert health["worker_restarts"] >= 1 and health["queue"]["live_workers"] == 1
    assert client.xpending("earshot:moonshine-tiny-en:finals", "workers")["pending"] == 0
    workers.remove(killed[0])
    workers.append(start_worker(redis.url, *WORKER))  # the pool grows back: 2 live again
    assert asyncio.run(_wait_for(lambda: server.health()["workers_ready"] == 2))


async def _wait_for(check, timeout: float = 10.0) -> bool:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        if await asyncio.to_thread(check):
            return True
        await asyncio.sleep(0.2)
    return False


def test_a_redis_restart_fails_loudly_then_the_gateway_recovers(cluster):
    """Last in this module: it replaces the module's Redis (same port, empty)."""
    redis, workers, server, redises = cluster
    redis.proc.kill()
    redis.proc.wait()
    assert asyncio.run(_wait_for(lambda: server.health()["status"] == "failed"))
    health = server.health()
    assert "decode queue lost" in health["queue"]["lost"] and health["workers_ready"] == 0
    for w in workers:  # workers say so and exit 3 (their supervisor restarts them)
        assert w.proc.wait(30) == 3
        assert any("lost Redis" in line for line in w.log)
    again = RedisServer.start(port=redis.port)  # restarted without persistence: empty
    redises.append(again)
    workers.append(start_worker(again.url, *WORKER))
    assert asyncio.run(_wait_for(lambda: server.health()["status"] == "ready", 15)), \
        server.health()
    audio = speech_with_pauses([DEV / r["path"] for r in ROWS[:2]], pause_s=0.8)
    finals, _ = asyncio.run(stream_audio(server.url, audio))
    assert [f.segment for f in finals] == [0, 1] and not any(f.error for f in finals)
    score = word_error_rate([r["transcript"] for r in ROWS[:2]], [f.text for f in finals])
    assert score.wer < 0.1
