"""earshot-worker against a real redis-server: poison tasks reach the dead-letter stream,
Redis passwords pass through (a wrong one fails loudly at start), and the embedded default
server needs no Redis at all."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from edge_server.queue import streams as S
from tests.redis_server import RedisServer, start_worker
from tests.server_harness import start_server, wait_until

POISON = {"EARSHOT_WORKER_FAULT": "crash-if-peak-above=0.999"}
MODEL = "noop"


@pytest.fixture(scope="module")
def redis_auth():
    server = RedisServer.start(password="s3cret-pass")
    yield server
    server.stop()


def _wait(check, timeout: float = 20.0):
    return wait_until(check, timeout)


def test_a_task_that_kills_workers_twice_is_dead_lettered_and_its_gateway_told(redis_auth):
    client = redis_auth.client()
    gateway = "test-gw-poison"
    client.xgroup_create(S.result_stream(gateway), S.RESULT_GROUP, id="0", mkstream=True)
    workers = [start_worker(redis_auth.url, "--noop-engine", "--model", MODEL, env=POISON)
               for _ in range(3)]
    try:
        poison = np.zeros(8000, np.float32)
        poison[100] = 1.0
        stream = S.task_stream(MODEL, True)
        client.xadd(stream, S.encode_task(gateway, "0.0", MODEL, np.zeros(4000, np.float32)))
        client.xadd(stream, S.encode_task(gateway, "0.1", MODEL, poison))
        dead = _wait(lambda: client.xrange(S.dead_stream(MODEL)))
        assert len(dead) == 1, [w.log for w in workers]
        letter = dead[0][1]
        assert letter[b"rid"] == b"0.1" and int(letter[b"deliveries"]) == 3
        assert b"crashed the worker twice" in letter[b"error"]
        results = {f[b"rid"]: f for _, f in client.xrange(S.result_stream(gateway))}
        assert b"crashed the worker twice" in results[b"0.1"][b"err"]
        assert b"text" in results[b"0.0"] and b"err" not in results[b"0.0"]  # the innocent row
        assert sum(w.proc.poll() == 77 for w in workers) == 2  # two victims, one survivor
        assert client.xlen(stream) == 0 and client.xpending(stream, S.GROUP)["pending"] == 0
    finally:
        for w in workers:
            w.stop()


def test_password_passes_through_and_a_wrong_one_fails_loudly_at_start(redis_auth):
    worker = start_worker(redis_auth.url, "--noop-engine", "--model", MODEL)
    try:
        key = S.worker_key(worker.worker_id)
        assert _wait(lambda: redis_auth.client().hget(key, "model")) == MODEL.encode()
        wrong = redis_auth.url.replace("s3cret-pass", "wrong")
        for cmd in ([sys.executable, "-m", "edge_server.queue.worker_cli", "--queue", wrong,
                     "--noop-engine"],
                    [sys.executable, "-m", "edge_server.cli", "--queue", wrong,
                     "--noop-engine", "--port", "0", "--no-mdns"]):
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
            assert out.returncode == 2, out
            assert "refused the password" in out.stderr and "wrong" not in out.stderr
        no_password = redis_auth.url.replace(":s3cret-pass@", "")
        out = subprocess.run([sys.executable, "-m", "edge_server.queue.worker_cli", "--queue",
                              no_password, "--noop-engine"], capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 2 and "needs a password" in out.stderr, out
        out = subprocess.run([sys.executable, "-m", "edge_server.queue.worker_cli", "--queue",
                              "http://example/0", "--noop-engine"], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 2 and "redis://" in out.stderr, out
    finally:
        assert worker.stop() == 0
    assert not redis_auth.client().exists(key)  # a stopped worker deregisters at once


def test_gateway_counts_remote_workers_as_they_come_and_go(redis_auth):
    first = start_worker(redis_auth.url, "--noop-engine", "--model", MODEL)
    server = start_server("--queue", redis_auth.url, "--noop-engine")
    workers = [first]
    try:
        assert server.health()["workers_ready"] == 1
        workers.append(start_worker(redis_auth.url, "--noop-engine", "--model", MODEL))
        assert _wait(lambda: server.health()["workers_ready"] == 2)
        first.kill()
        assert _wait(lambda: server.health()["workers_ready"] == 1)
        health = server.health()
        assert health["status"] == "ready" and health["worker_restarts"] == 1
        assert health["server"]["workers"] == 1  # capacity counts the live pool
        assert "s3cret" not in str(health)  # the password never leaves the gateway
    finally:
        assert server.stop() == 0
        for w in workers:
            w.stop()


def test_the_embedded_default_imports_no_redis():
    code = ("import sys; import edge_server.cli, edge_server.app, edge_server.scheduler; "
            "from edge_server.app import EdgeServer; from edge_server.config import "
            "ServerSettings; EdgeServer(ServerSettings(noop_engine=True)); "
            "print(sorted(m for m in sys.modules if m == 'redis' or m.startswith('redis.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_with_workers_n_the_gateway_also_runs_local_workers_and_restarts_them(redis_auth):
    server = start_server("--queue", redis_auth.url, "--noop-engine", "--workers", "1")
    try:
        health = server.health()
        assert health["workers_ready"] == 1 and len(health["worker_pids"]) == 1
        (pid,) = health["worker_pids"]
        import os
        import signal

        os.kill(pid, signal.SIGKILL)

        def replaced() -> bool:  # a new local process, and its own heartbeat (its pid)
            health = server.health()
            beats = [w["pid"] for w in health["queue"]["workers"]]
            return health["worker_pids"] not in ([], [pid]) and beats == [
                str(p) for p in health["worker_pids"]]

        assert _wait(replaced), server.health()
    finally:
        assert server.stop() == 0
    assert not redis_auth.client().keys(S.WORKER_PATTERN)  # stopped with it: deregistered


def test_tls_rediss_passes_through_and_an_untrusted_certificate_fails_loudly():
    redis = RedisServer.start(password="tls-pass", tls=True)
    worker = server = None
    try:
        assert redis.url.startswith("rediss://")
        worker = start_worker(redis.url, "--noop-engine", "--model", MODEL)
        server = start_server("--queue", redis.url, "--noop-engine")
        assert server.health()["workers_ready"] == 1
        untrusted = redis.url.split("?")[0]  # no ssl_ca_certs: the test CA is unknown
        for cmd in ([sys.executable, "-m", "edge_server.queue.worker_cli", "--queue",
                     untrusted, "--noop-engine"],
                    [sys.executable, "-m", "edge_server.cli", "--queue", untrusted,
                     "--noop-engine", "--port", "0", "--no-mdns"]):
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
            assert out.returncode == 2 and "certificate verify failed" in out.stderr, out
    finally:
        if server is not None:
            assert server.stop() == 0
        if worker is not None:
            worker.stop()
        redis.stop()
