"""Token prefixes (drafts) and decoded tokens through the Redis queue: the compact int32
fields (streams.py) and a real RedisPool + real redis-server + real `earshot-worker`."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from edge_server.audio import read_audio
from edge_server.queue import streams as S
from edge_server.queue.pool import QueueConfig, RedisPool
from edge_server.workers import Decoded
from tests.conftest import DEV
from tests.redis_server import RedisServer, start_worker

MODEL = "moonshine-tiny-en"


def test_ids_travel_as_int32_bytes_and_bad_ones_are_refused():
    task = S.encode_task("gw", "1.0", MODEL, np.zeros(10, np.float32), prefix=(5, 70000))
    assert task["pfx"] == np.array([5, 70000], "<i4").tobytes()
    assert S.decode_ids({b"pfx": task["pfx"]}, "pfx") == (5, 70000)
    assert "pfx" not in S.encode_task("gw", "1.0", MODEL, np.zeros(10, np.float32))
    assert S.decode_ids({}, "pfx") == ()
    with pytest.raises(S.BadTask, match="whole int32"):
        S.decode_ids({b"pfx": b"\x01\x02\x03"}, "pfx")
    result = S.encode_result("1.0", "w", "hi", tokens=(7, 8))
    assert S.decode_ids({k.encode(): v for k, v in result.items()}, "tok") == (7, 8)
    assert "tok" not in S.encode_result("1.0", "w", error="boom", tokens=(7, 8))


async def decode_through_queue(url: str, audios: list, prefixes: list | None) -> Decoded:
    pool = RedisPool(QueueConfig(url=url, model_ids=(MODEL,), poll_s=0.2))
    await pool.start()
    try:
        deadline = time.monotonic() + 30
        while not pool.ready_count:
            assert time.monotonic() < deadline, "no live worker"
            await asyncio.sleep(0.1)
        slot = await pool.acquire()
        return await pool.run(slot, audios, MODEL, urgent=False, prefixes=prefixes)
    finally:
        await pool.stop()


def test_a_partial_keeps_its_prefix_through_a_real_worker():
    clips = [read_audio(DEV / "sherpa-test-wavs/0.wav"), read_audio(DEV / "sherpa-test-wavs/1.wav")]
    redis = RedisServer.start()
    worker = None
    try:
        worker = start_worker(redis.url, "--model", MODEL, "--device", "cpu", "--threads", "1")
        free = asyncio.run(decode_through_queue(redis.url, clips, None))
        assert free.errors is None and all(free.tokens) and "lamps" in free.texts[0]
        # a draft (workers verify it) changes nothing: the start of its own free decode,
        # or the other clip's words
        for drafts in ([free.tokens[0][:6], free.tokens[1][:3]],
                       [free.tokens[1][:4], free.tokens[0][:4]]):
            got = asyncio.run(decode_through_queue(redis.url, clips, drafts))
            assert (got.texts, got.tokens, got.errors) == (free.texts, free.tokens, None)
        # the prefix reaches the engine: one it must refuse (BOS) fails its row alone
        got = asyncio.run(decode_through_queue(redis.url, clips, [(1, 5), ()]))
        assert got.errors[0] and "prefix token ids must be in" in got.errors[0]
        assert got.errors[1] is None and got.tokens[1] == free.tokens[1]
    finally:
        if worker is not None:
            worker.stop()
        redis.stop()
