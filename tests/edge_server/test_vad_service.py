"""The server's batched VAD: one stream's numbers, fair rounds, one request per stream."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from edge_server.vad_service import VadService
from tests.babble import babble
from tests.conftest import DEV, speech_with_pauses

FRAME = 1600  # 100 ms


def run(coro):
    return asyncio.run(coro)


def test_a_flooding_session_does_not_hold_up_a_real_time_one(vad):
    flood_audio = babble(60, seed=1)  # 60 s sent at once: 1875 windows
    live_audio = speech_with_pauses([DEV / "sherpa-test-wavs/0.wav"], pause_s=0.5)[: 32 * FRAME]
    service = VadService(vad, slice_windows=16)

    async def scenario():
        flood, live = service.stream(), service.stream()
        flood_task = asyncio.create_task(service.probs(flood, flood_audio))
        await asyncio.sleep(0)  # the flood is queued first
        live_probs, waits = [], []
        for i in range(0, len(live_audio), FRAME):
            before = service.windows
            live_probs.append(await service.probs(live, live_audio[i : i + FRAME]))
            waits.append(service.windows - before)  # windows decided while this frame waited
        flood_done_early = flood_task.done()
        return await flood_task, np.concatenate(live_probs), waits, flood_done_early

    flood_probs, live_probs, waits, flood_done_early = run(scenario())
    assert not flood_done_early, "the live frames waited for the whole flood"
    # a live frame waits for at most the round running plus its own: 2 slices of each session
    assert max(waits) <= 2 * 2 * service.slice_windows
    # slicing changes nothing: the same probabilities as each stream fed alone
    assert np.allclose(flood_probs, vad.stream().feed(flood_audio), atol=1e-5)
    assert np.allclose(live_probs, vad.stream().feed(live_audio), atol=1e-5)
    assert service.backlog_windows == 0
    service.close()


def test_one_request_per_stream_at_a_time(vad):
    service = VadService(vad)

    async def scenario():
        stream = service.stream()
        first = asyncio.create_task(service.probs(stream, np.zeros(16000, np.float32)))
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="one VAD request per stream"):
            await service.probs(stream, np.zeros(1600, np.float32))
        assert len(await first) == 16000 // 512

    run(scenario())
    service.close()


def test_a_cancelled_request_is_dropped_from_the_rounds(vad):
    service = VadService(vad, slice_windows=8)

    async def scenario():
        stream, other = service.stream(), service.stream()
        gone = asyncio.create_task(service.probs(stream, np.zeros(60 * 16000, np.float32)))
        await asyncio.sleep(0)
        gone.cancel()
        await service.probs(other, np.zeros(1600, np.float32))
        while service.backlog_windows:
            await asyncio.sleep(0.01)
        return service.windows

    assert run(scenario()) <= 2 * 8 + 3  # the cancelled 1875 windows were never all run
    service.close()
