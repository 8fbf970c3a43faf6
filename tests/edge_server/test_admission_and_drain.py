"""Refusing sessions at the door (503 + Retry-After) only when truly unable to serve them,
admitting them while workers restart, and draining on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import numpy as np
import pytest

from desktop.stream_client import StreamClient, StreamError
from edge_server.audio import read_audio
from tests.conftest import DEV
from tests.server_harness import start_server, stream_audio


def test_full_server_refuses_with_503_and_retry_after():
    server = start_server("--noop-engine", "--max-sessions", "1")
    try:
        async def go():
            first = StreamClient(server.url)
            await first.connect()
            second = StreamClient(server.url)
            with pytest.raises(StreamError) as err:
                await second.connect()
            await first.send_audio(np.zeros(1600, np.float32))
            await first.finish(10)
            return err.value

        refused = asyncio.run(go())
        assert refused.code == "overloaded" and refused.retry_after == 5.0
        assert server.health()["counters"]["sessions_rejected"] == 1
    finally:
        server.stop()


def test_new_streams_are_admitted_while_every_worker_restarts():
    """Both workers SIGKILLed: restarting is not being over capacity, so a new stream is
    admitted (no 503), its audio waits for the replacements, and it is transcribed."""
    server = start_server("--workers", "2")
    audio = read_audio(DEV / "sherpa-test-wavs/0.wav")
    try:
        deadline = time.monotonic() + 60
        while len(pids := server.health()["worker_pids"]) < 2:  # "ready" needs only one
            assert time.monotonic() < deadline
            time.sleep(0.05)
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while server.health()["workers_ready"] and time.monotonic() < deadline:
            time.sleep(0.01)
        health = server.health()
        assert health["workers_ready"] == 0 and health["status"] == "ready", health

        finals, _ = asyncio.run(stream_audio(server.url, audio, partials=True))
        assert len(finals) == 1 and not finals[0].error
        assert "nightfall" in finals[0].text.lower()
        health = server.health()
        assert health["counters"].get("sessions_rejected", 0) == 0
        assert health["worker_restarts"] >= 2 and not set(pids) & set(health["worker_pids"])
    finally:
        server.stop()


def test_a_server_whose_workers_never_loaded_refuses():
    """Before any worker has loaded (or when none could), new streams get 503."""
    from edge_server.app import EdgeServer
    from edge_server.config import ServerSettings

    server = EdgeServer(ServerSettings(noop_engine=True))
    try:
        assert server.admission_refusal() == "server is starting (models loading)"
        server.startup_error = "worker 0 could not load the engine: boom"
        assert server.admission_refusal() == ("server failed to start: worker 0 could not "
                                              "load the engine: boom")
        server.draining = True
        assert server.admission_refusal() == "server is shutting down"
    finally:
        server.clips.close()
        server.vad.close()


def test_sigterm_drains_open_segments_and_ends_turns():
    server = start_server()
    audio = read_audio(DEV / "sherpa-test-wavs/1.wav")[: 16000 * 6]  # stops mid-sentence
    try:
        events: list = []

        async def go():
            client = StreamClient(server.url, on_event=lambda e: events.append(e))
            await client.connect()
            for i in range(0, len(audio), 1600):
                await client.send_audio(audio[i : i + 1600])
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.5)
            server.proc.send_signal(signal.SIGTERM)
            started = time.monotonic()
            finals = await client.wait_ended(30)  # no `end`: the server ends the turn
            return finals, time.monotonic() - started

        finals, waited = asyncio.run(go())
        assert server.proc.wait(30) == 0
        kinds = [e["type"] for e in events]
        assert "error" in kinds and kinds[-1] == "ended"
        notice = next(e for e in events if e["type"] == "error")
        assert notice["code"] == "shutting_down" and notice["fatal"] is False
        assert len(finals) == 1 and "consequence" in finals[0].text.lower()
        assert waited < 30
    finally:
        server.stop(signal.SIGKILL)


def test_frames_sent_during_drain_are_ignored_not_errors():
    """A client that keeps sending after `shutting_down` still gets its finals and `ended`."""
    import json

    import aiohttp

    from edge_server.audio import float_to_pcm16
    from edge_server.protocol import encode_frame

    server = start_server()
    audio = read_audio(DEV / "sherpa-test-wavs/0.wav")
    try:
        async def go():
            hello = {"type": "hello", "protocol": 1, "session": "drain-raw",
                     "audio": {"encoding": "pcm_s16le", "sample_rate": 16000, "channels": 1}}
            messages = []
            async with aiohttp.ClientSession() as http, http.ws_connect(
                    server.url + "/v1/stream") as ws:
                await ws.send_str(json.dumps(hello))
                seq = 0
                for i in range(0, 16000 * 4, 1600):
                    await ws.send_bytes(encode_frame(seq, float_to_pcm16(audio[i : i + 1600])))
                    seq += 1
                await asyncio.sleep(0.3)
                server.proc.send_signal(signal.SIGTERM)
                for i in range(16000 * 4, len(audio), 1600):  # keeps talking regardless
                    if ws.closed:
                        break
                    await ws.send_bytes(encode_frame(seq, float_to_pcm16(audio[i : i + 1600])))
                    seq += 1
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        messages.append(json.loads(msg.data))
                return messages, ws.close_code

        messages, close = asyncio.run(go())
        kinds = [m["type"] for m in messages]
        assert not [m for m in messages if m["type"] == "error" and m["fatal"]], messages
        assert "final" in kinds and kinds[-1] == "ended" and close == 1000
        assert server.proc.wait(30) == 0
    finally:
        server.stop(signal.SIGKILL)
