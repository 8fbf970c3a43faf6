"""Speech that never pauses, through a real earshot-server: cut every max_segment_s, nothing lost.

Memory growth over 30 minutes is measured by bench/soak.py (docs/benchmarks.md); here the
session path (batched VAD, segmenter release, partials of the open segment) must still
deliver every cut segment exactly once, back to back, with partials on.
"""

from __future__ import annotations

import asyncio
import itertools
import time

from tests.babble import babble
from tests.server_harness import start_server, stream_audio

SECONDS = 150
SPEED = 50  # times real time: fast, but within the server's max_realtime_factor (100)


def test_endless_speech_is_finalized_back_to_back():
    server = start_server()
    try:
        audio = babble(SECONDS, seed=2)
        events: list = []
        started = time.monotonic()

        async def pace(_client, sent: int) -> None:
            ahead = started + sent / 16000 / SPEED - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)

        finals, _ = asyncio.run(stream_audio(server.url, audio, frame=3200, events=events,
                                             during=pace))
    finally:
        assert server.stop() == 0
    assert [f.segment for f in finals] == list(range(len(finals)))
    assert len(finals) >= SECONDS / 20
    assert finals[0].start == 0 and finals[-1].end == SECONDS
    for a, b in itertools.pairwise(finals):
        assert b.start == a.end, "a max-length cut continues exactly where the last one ended"
    assert all(f.end - f.start <= 20.0 for f in finals)
    assert sum(1 for f in finals if f.text.strip()) >= len(finals) - 1
    ended = next(e for _, e in events if e["type"] == "ended")
    assert ended["segments"] == len(finals) and ended["audio_seconds"] == SECONDS
    assert any(e["type"] == "partial" for _, e in events)
