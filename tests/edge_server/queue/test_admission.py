"""Admission through the queue: the gateway refuses new streams (503) only when every live
worker is taken, and admits again as soon as a worker joins the pool from anywhere."""

from __future__ import annotations

import asyncio

import numpy as np

from desktop.stream_client import StreamClient, StreamError
from edge_server.audio import read_audio
from tests.conftest import DEV, dev_rows
from tests.redis_server import RedisServer, start_worker
from tests.server_harness import start_server

ROWS = dev_rows(("pocketsphinx-testdata",))[:2]
HANG = {"EARSHOT_WORKER_FAULT": "hang-if-peak-above=0.999"}
WORKER = ("--model", "moonshine-tiny-en", "--device", "cpu", "--threads", "1",
          "--deadline-floor-s", "60", "--deadline-cap-s", "60")


def test_503_only_when_the_whole_pool_is_taken_and_a_new_worker_admits_again(tmp_path):
    config = tmp_path / "fast-overload.toml"
    config.write_text("overload_after_s = 0.5\n")
    redis = RedisServer.start()
    hung = [start_worker(redis.url, *WORKER, env=HANG) for _ in range(2)]
    workers = list(hung)
    server = start_server("--queue", redis.url, "--config", str(config))
    try:
        speech = read_audio(DEV / ROWS[0]["path"])
        loud = speech.copy()
        loud[len(loud) // 8] = 1.0  # early: its partials and its final hang a worker each
        gap = np.zeros(16_000, np.float32)

        async def go():
            first = StreamClient(server.url)
            await first.connect()
            await _send(first, np.concatenate([gap, loud, gap]))
            # both workers hang on it (a partial and the final); nobody else can decode
            for _ in range(300):
                if server.health()["queue"]["in_flight_rows"] >= 2:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"the workers never both took the loud audio: "
                                     f"{server.health()}")
            second = StreamClient(server.url)
            await second.connect()  # admitted: the queue was not behind yet
            await _send(second, np.concatenate([gap, speech, gap]))
            for _ in range(100):  # its final waits for a free worker: the pool is full
                if server.health()["queue_depth"] and (await _refused(server.url)):
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"never refused: {server.health()}")
            refused = await _refused(server.url)
            workers.append(await asyncio.to_thread(start_worker, redis.url, *WORKER[:6]))
            for _ in range(100):  # a healthy worker joins: the waiting final is decoded
                if not await _refused(server.url):
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"still refused: {server.health()}")
            for w in hung:
                w.kill()  # their rows go idle; the healthy worker claims and decodes them
            finals_first = await first.finish(60)
            finals_second = await second.finish(60)
            return refused, finals_first, finals_second

        refused, finals_first, finals_second = asyncio.run(go())
        assert refused.code == "overloaded" and refused.retry_after
        assert server.health()["counters"]["sessions_rejected"] >= 1
        assert [f.segment for f in finals_first] == [0] and finals_first[0].text
        assert [f.segment for f in finals_second] == [0] and finals_second[0].text
        assert not finals_first[0].error and not finals_second[0].error
    finally:
        assert server.stop() == 0
        for w in workers:
            w.stop()
        redis.stop()


async def _refused(url: str) -> StreamError | None:
    client = StreamClient(url)
    try:
        await client.connect()
    except StreamError as exc:
        return exc
    await client.send_audio(np.zeros(160, np.float32))
    await client.finish(10)
    return None



async def _send(client: StreamClient, audio: np.ndarray) -> None:
    """0.1 s frames at ~30x real time (the server refuses faster than 100x)."""
    for i in range(0, len(audio), 1600):
        await client.send_audio(audio[i:i + 1600])
        await asyncio.sleep(0.003)
