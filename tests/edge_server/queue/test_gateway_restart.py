"""The gateway restarts on the same Redis (and the same port) while two real `earshot-worker`
processes keep running: SIGKILLed with rows in flight, its clients learn their session is
gone and the new gateway transcribes new sessions right; the old gateway's leftover results
never reach the new one and its result stream expires (`queue_results_ttl_s`), so nothing
is left behind. Stopped with SIGTERM, it drains: finals delivered, its stream deleted."""

from __future__ import annotations

import asyncio
import signal

import pytest

from desktop.stream_client import StreamError
from edge_server.evaluation import word_error_rate
from edge_server.queue import streams as S
from tests.conftest import DEV, dev_rows, speech_with_pauses
from tests.redis_server import RedisServer, start_worker
from tests.server_harness import start_server, stream_audio, wait_until

ROWS = dev_rows(("pocketsphinx-testdata",))[:6]
MODEL = "moonshine-tiny-en"
WORKER = ("--model", MODEL, "--device", "cpu", "--threads", "1", "--batch", "4")
TTL_S = 3.0
TASKS = (S.task_stream(MODEL, True), S.task_stream(MODEL, False))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    config = tmp_path_factory.mktemp("gw") / "server.toml"
    config.write_text(f"queue_results_ttl_s = {TTL_S}\n")
    redis = RedisServer.start()
    workers = []
    try:
        workers = [start_worker(redis.url, *WORKER) for _ in range(2)]
        yield redis, workers, ("--queue", redis.url, "--config", str(config))
    finally:
        for w in workers:
            w.stop()
        redis.stop()


def _in_redis(client) -> int:
    """Rows waiting in the task streams or held by a worker (pending)."""
    return sum(client.xlen(s) + client.xpending(s, S.GROUP)["pending"] for s in TASKS)


def _wait(check, timeout: float) -> bool:
    return bool(wait_until(check, timeout, 0.1))


def _transcribes_right(server, rows) -> None:
    audio = speech_with_pauses([DEV / r["path"] for r in rows], pause_s=0.8)
    finals, _ = asyncio.run(stream_audio(server.url, audio))
    assert [f.segment for f in finals] == list(range(len(rows)))
    assert not any(f.error for f in finals), finals
    assert word_error_rate([r["transcript"] for r in rows], [f.text for f in finals]).wer < 0.1


def _port(server) -> str:
    return server.url.rsplit(":", 1)[1]


def test_sigkill_with_rows_in_flight_then_a_new_gateway_on_the_same_port(cluster):
    redis, workers, args = cluster
    client = redis.client()
    old = start_server(*args)
    new = None
    old_gateway = old.health()["queue"]["gateway"]
    audio = speech_with_pauses([DEV / r["path"] for r in ROWS], pause_s=0.8)
    caught: list[int] = []
    started: list = []

    async def kill_the_gateway(_client, sent):
        if caught or sent < len(audio) * 0.3:
            return
        if in_flight := await asyncio.to_thread(_in_redis, client):
            old.proc.kill()  # SIGKILL while its rows are in Redis
            caught.append(in_flight)
            # the restart, on the same port: the client's resume reaches the new gateway
            started.append(await asyncio.to_thread(start_server, *args, "--port", _port(old)))
        else:
            await asyncio.sleep(0.005)

    try:
        with pytest.raises(StreamError) as ended:
            asyncio.run(stream_audio(old.url, audio, during=kill_the_gateway))
        assert caught, "the gateway never had rows in flight"
        (new,) = started
        assert old.proc.wait(10) == -signal.SIGKILL
        assert ended.value.code == "session_unknown"  # its app starts a new session
        assert all(w.proc.poll() is None for w in workers)  # no worker restarted
        health = new.health()
        assert health["status"] == "ready" and health["workers_ready"] == 2
        assert {w["id"] for w in health["queue"]["workers"]} == {w.worker_id for w in workers}
        new_gateway = health["queue"]["gateway"]
        assert new_gateway != old_gateway and new.url == old.url
        _transcribes_right(new, ROWS[:3])
        # the old gateway's rows were decoded and acknowledged; its stream expired
        assert _wait(lambda: _in_redis(client) == 0, 30)
        assert _wait(lambda: not client.exists(S.result_stream(old_gateway)), TTL_S + 5)
        queue = new.health()["queue"]
        assert queue["duplicates_dropped"] == 0 and queue["in_flight_rows"] == 0
        assert all(w.proc.poll() is None for w in workers)
        assert not any("Traceback" in line for w in workers for line in w.log)
        # nothing left behind: the task streams (empty), the heartbeats, the live gateway's
        # (empty) result stream; one consumer group per stream, its consumers the workers
        expected = {*TASKS, S.result_stream(new_gateway),
                    *(S.worker_key(w.worker_id) for w in workers)}
        assert {k.decode() for k in client.keys("earshot:*")} == expected
        assert client.xlen(S.result_stream(new_gateway)) == 0
        for stream in TASKS:
            (group,) = client.xinfo_groups(stream)
            assert group["pending"] == 0
            consumers = {c["name"].decode() for c in client.xinfo_consumers(stream, S.GROUP)}
            assert consumers <= {w.worker_id for w in workers}
    finally:
        if new is not None:
            assert new.stop() == 0
        old.stop(signal.SIGKILL)


def test_sigterm_drains_then_deletes_its_stream_and_the_next_gateway_serves(cluster):
    redis, workers, args = cluster
    client = redis.client()
    old = start_server(*args)
    gateway = old.health()["queue"]["gateway"]
    audio = speech_with_pauses([DEV / r["path"] for r in ROWS], pause_s=0.8)
    caught: list[int] = []

    async def stop_the_gateway(_client, sent):
        if caught or sent < len(audio) * 0.6:
            return
        if in_flight := await asyncio.to_thread(_in_redis, client):
            old.proc.send_signal(signal.SIGTERM)  # a clean stop while rows are in flight
            caught.append(in_flight)
        else:
            await asyncio.sleep(0.005)

    try:
        finals, stream = asyncio.run(stream_audio(old.url, audio, during=stop_the_gateway))
        assert caught, "the gateway never had rows in flight"
        assert old.proc.wait(60) == 0
        assert stream.server_ending  # told `shutting_down`, then `ended`
        assert finals and [f.segment for f in finals] == list(range(len(finals)))
        assert not any(f.error for f in finals), finals  # what was in flight was delivered
        *whole, last = finals  # the last one ends where the audio the gateway got ended
        if whole:
            assert word_error_rate([r["transcript"] for r in ROWS[:len(whole)]],
                                   [f.text for f in whole]).wer < 0.1
        got = last.text.split()  # its last word may be cut mid-word: compare the rest
        said = ROWS[len(whole)]["transcript"].split()[:len(got) - 1]
        assert got and word_error_rate([" ".join(said)], [" ".join(got[:-1])]).wer < 0.2
        assert not client.exists(S.result_stream(gateway))  # deleted, not left to expire
        assert all(w.proc.poll() is None for w in workers)
        new = start_server(*args)
        try:
            _transcribes_right(new, ROWS[3:4])
        finally:
            assert new.stop() == 0
        assert _in_redis(client) == 0
    finally:
        old.stop(signal.SIGKILL)
