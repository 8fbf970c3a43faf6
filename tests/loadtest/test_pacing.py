"""loadtest.pacing: a frame goes out when its audio is complete, not before."""

import asyncio
import time

from loadtest.pacing import Pacer


def test_each_frame_is_sent_when_its_last_sample_was_spoken():
    async def go() -> tuple[Pacer, list[float]]:
        pacer = Pacer(1600, 16000)
        sent = []
        for i in range(5):
            await pacer.wait(i)
            sent.append(time.monotonic())
        return pacer, sent

    pacer, sent = asyncio.run(go())
    for i, at in enumerate(sent):
        assert at >= pacer.t0 + (i + 1) * 0.1  # never before its audio is complete
        assert at - pacer.due(i) < 0.05
    assert pacer.wall_time(0.25) == pacer.t0 + 0.25
    assert len(pacer.lags) == 5 and min(pacer.lags) >= 0
