"""A gateway's result stream lives as long as the gateway: it refreshes a TTL
(`queue_results_ttl_s`, short here), deletes the stream when it stops, and a SIGKILLed
gateway's stream expires on its own; a worker's late result never brings it back."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from edge_server.queue import streams as S
from tests.redis_server import RedisServer, start_worker
from tests.server_harness import start_server, wait_until

TTL_S = 2.0
MODEL = "noop"


@pytest.fixture(scope="module")
def redis_and_worker():
    redis = RedisServer.start()
    worker = start_worker(redis.url, "--noop-engine", "--model", MODEL)
    try:
        yield redis, worker
    finally:
        worker.stop()
        redis.stop()


@pytest.fixture
def short_ttl(tmp_path):
    config = tmp_path / "server.toml"
    config.write_text(f"queue_results_ttl_s = {TTL_S}\n")
    return str(config)


def _wait(check, timeout: float) -> bool:
    return bool(wait_until(check, timeout, 0.05))


def test_a_killed_gateways_stream_expires_and_late_results_do_not_revive_it(
        redis_and_worker, short_ttl):
    redis, worker = redis_and_worker
    client = redis.client()
    server = start_server("--queue", redis.url, "--noop-engine", "--config", short_ttl)
    try:
        gateway = server.health()["queue"]["gateway"]
        stream = S.result_stream(gateway)
        assert 0 < client.pttl(stream) <= TTL_S * 1000
        time.sleep(TTL_S * 1.5)  # outlived its TTL: refreshed while the gateway runs
        assert client.exists(stream) and 0 < client.pttl(stream) <= TTL_S * 1000
    finally:
        server.stop(signal.SIGKILL)
    assert client.pttl(stream) != -1  # still there and expiring (-2: gone already)
    assert _wait(lambda: not client.exists(stream), TTL_S + 2)
    # a task of the dead gateway, decoded after its stream expired: acked, result dropped
    tasks = S.task_stream(MODEL, True)
    client.xadd(tasks, S.encode_task(gateway, "7.0", MODEL, np.zeros(1600, np.float32)))
    assert _wait(lambda: client.xlen(tasks) == 0 and
                 client.xpending(tasks, S.GROUP)["pending"] == 0, 10)
    assert _wait(lambda: any(f"{gateway} gone" in line for line in worker.log), 5), worker.log
    assert not client.exists(stream) and worker.proc.poll() is None


def test_a_stopped_gateway_deletes_its_stream_at_once(redis_and_worker, short_ttl):
    redis, _ = redis_and_worker
    server = start_server("--queue", redis.url, "--noop-engine", "--config", short_ttl)
    stream = S.result_stream(server.health()["queue"]["gateway"])
    assert redis.client().exists(stream)
    assert server.stop() == 0
    assert not redis.client().exists(stream)


def test_a_too_short_ttl_is_refused_in_one_line(redis_and_worker, tmp_path):
    redis, _ = redis_and_worker
    config = tmp_path / "bad.toml"
    config.write_text("queue_results_ttl_s = 0.2\n")
    out = subprocess.run([sys.executable, "-m", "edge_server.cli", "--queue", redis.url,
                          "--noop-engine", "--port", "0", "--no-mdns", "--config", str(config)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out
    assert "queue_results_ttl_s must be a number of seconds, at least 1" in out.stderr


def test_a_stream_that_vanishes_under_a_live_gateway_is_created_again(redis_and_worker,
                                                                       short_ttl):
    redis, _ = redis_and_worker
    client = redis.client()
    server = start_server("--queue", redis.url, "--noop-engine", "--config", short_ttl)
    try:
        stream = S.result_stream(server.health()["queue"]["gateway"])
        client.delete(stream)  # as a flushed Redis, or a gateway stalled past its TTL
        assert _wait(lambda: client.exists(stream), 5)
        assert [g["name"] for g in client.xinfo_groups(stream)] == [S.RESULT_GROUP.encode()]
        assert 0 < client.pttl(stream) <= TTL_S * 1000
        assert _wait(lambda: any("vanished" in line or "re-creating consumer groups" in line
                                 for line in server.log), 5), server.log  # (read by a thread)
        assert server.health()["status"] == "ready"
    finally:
        assert server.stop() == 0


def test_a_killed_gateways_local_workers_stop_too(redis_and_worker, short_ttl):
    """`--workers N`: its own earshot-worker processes do not outlive a SIGKILLed gateway
    (else every crash and restart would add N more)."""
    redis, worker = redis_and_worker
    server = start_server("--queue", redis.url, "--noop-engine", "--workers", "1",
                          "--config", short_ttl)
    try:
        (pid,) = server.health()["worker_pids"]
        local = {w["id"] for w in server.health()["queue"]["workers"]} - {worker.worker_id}
    finally:
        server.stop(signal.SIGKILL)
    assert _wait(lambda: not _alive(pid), 10), f"local worker {pid} outlived its gateway"
    client = redis.client()
    assert _wait(lambda: not any(client.exists(S.worker_key(w)) for w in local), 5)
    assert worker.proc.poll() is None  # a worker started on its own keeps running


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"  # (a zombie waits for init to reap it)
    except FileNotFoundError:
        return False


def test_on_defaults_the_result_stream_lives_a_minute_past_its_gateway(redis_and_worker):
    """No config file: the default `queue_results_ttl_s` (60 s) is set on the stream."""
    redis, _ = redis_and_worker
    client = redis.client()
    server = start_server("--queue", redis.url, "--noop-engine")
    try:
        stream = S.result_stream(server.health()["queue"]["gateway"])
        assert 50_000 < client.pttl(stream) <= 60_000
    finally:
        assert server.stop() == 0
    assert not client.exists(stream)  # a clean stop deletes it at once
