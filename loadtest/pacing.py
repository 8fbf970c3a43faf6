"""Real-time pacing of a stream's frames.

A frame is sent when its audio is complete: frame `i` holds samples
[i * frame, (i + 1) * frame) and is due at `t0 + (i + 1) * frame / rate`, the moment its
last sample was "spoken". So a stream time `s` happened at wall time `t0 + s`
(`wall_time`), which is what latencies are measured from. `lag` records how late each
frame actually went out (the load generator's own delay: when it grows, the client
machine, not the server, is the bottleneck). One Pacer per stream, on its asyncio loop.
"""

from __future__ import annotations

import asyncio
import time


class Pacer:
    def __init__(self, frame: int, rate: int = 16_000, t0: float | None = None) -> None:
        self.frame = frame
        self.rate = rate
        self.t0 = time.monotonic() if t0 is None else t0  # wall time of stream time 0
        self.lags: list[float] = []

    def due(self, index: int) -> float:
        """Monotonic time at which frame `index` is complete."""
        return self.t0 + (index + 1) * self.frame / self.rate

    def wall_time(self, stream_s: float) -> float:
        """Monotonic time at which stream second `stream_s` was spoken."""
        return self.t0 + stream_s

    async def wait(self, index: int) -> None:
        """Sleep until frame `index` is complete; record how late we woke (>= 0)."""
        delay = self.due(index) - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        self.lags.append(max(0.0, time.monotonic() - self.due(index)))
