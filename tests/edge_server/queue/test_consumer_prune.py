"""Each worker start joins the consumer group under a new id; a live worker deletes the
consumers of workers that are gone (no heartbeat key, no pending task, idle past
--prune-after-s) and never one that is alive or holds a task."""

from __future__ import annotations

import time

import pytest

from edge_server.queue import streams as S
from tests.redis_server import RedisServer, start_worker

MODEL = "noop"


@pytest.fixture
def redis():
    server = RedisServer.start()
    try:
        yield server
    finally:
        server.stop()


def _consumers(client, stream: str) -> set[str]:
    return {c["name"].decode() if isinstance(c["name"], bytes) else c["name"]
            for c in client.xinfo_consumers(stream, S.GROUP)}


def test_a_worker_prunes_consumers_of_dead_workers_only(redis):
    client = redis.client()
    finals = S.task_stream(MODEL, urgent=True)
    client.xgroup_create(finals, S.GROUP, id="0", mkstream=True)
    client.xadd(finals, {"junk": "1"})
    client.xreadgroup(S.GROUP, "holds-a-task", {finals: ">"}, count=1)
    for name in ("gone-1", "gone-2", "alive"):
        client.xgroup_createconsumer(finals, S.GROUP, name)
    client.hset(S.worker_key("alive"), mapping={"id": "alive"})  # its heartbeat
    client.pexpire(S.worker_key("alive"), 60_000)
    time.sleep(1.2)  # every ghost idle past --prune-after-s

    worker = start_worker(redis.url, "--noop-engine", "--model", MODEL, "--id", "pruner",
                          "--prune-after-s", "1", "--claim-idle-s", "600")
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and {"gone-1", "gone-2"} & _consumers(client, finals):
            time.sleep(0.2)
        assert _consumers(client, finals) - {"pruner"} == {"holds-a-task", "alive"}
        pending = client.xpending(finals, S.GROUP)
        assert pending["pending"] == 1  # the task of the consumer that holds it is untouched
    finally:
        worker.stop()
