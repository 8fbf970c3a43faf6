"""A segment that kills every worker it reaches, end to end through the gateway: after two
deliveries that lost their worker it lands in the dead-letter stream and the session gets
`decode_failed` for that segment alone; the segments around it are transcribed."""

from __future__ import annotations

import asyncio
import time

from tests.desktop.poisoned_audio import POISON, poisoned_speech
from tests.redis_server import RedisServer, start_worker
from tests.server_harness import start_server, stream_audio

WORKER = ("--model", "moonshine-tiny-en", "--device", "cpu", "--threads", "1")


def test_a_poison_segment_is_dead_lettered_and_fails_alone():
    redis = RedisServer.start()
    workers = [start_worker(redis.url, *WORKER, env=POISON) for _ in range(3)]
    server = start_server("--queue", redis.url)
    try:
        audio, _ = poisoned_speech()
        events: list = []
        finals, _ = asyncio.run(stream_audio(server.url, audio, partials=False,
                                             events=events))
        assert [f.segment for f in finals] == [0, 1, 2]
        assert finals[1].error == "decode_failed" and finals[1].text == ""
        assert finals[0].text and finals[2].text and not finals[0].error
        assert not finals[2].error
        (letter,) = redis.client().xrange("earshot:moonshine-tiny-en:dead")
        assert b"crashed the worker twice" in letter[1][b"error"]
        assert sum(w.proc.poll() == 77 for w in workers) == 2
        assert server.health()["queue"]["dead_letters"] == 1
        for _ in range(50):  # the victims' heartbeats expire: one live worker is left
            if server.health()["workers_ready"] == 1:
                break
            time.sleep(0.1)
        assert server.health()["workers_ready"] == 1
    finally:
        assert server.stop() == 0
        for w in workers:
            w.stop()
        redis.stop()
