"""Voice activity detection for every session, batched across sessions, off the event loop.

`await service.probs(stream, samples)` returns the VAD probabilities of the windows
`samples` completes for that session's `VadStream`. The work runs in rounds, each one
`run_batched` call in a single dedicated thread (onnxruntime releases the GIL):

- fairness: a round takes at most `slice_windows` windows (default 16, 512 ms of audio)
  from *every* request waiting, round-robin, so a session that sends a long block at once
  (a 2 s frame, a 10 s upload block) costs the others at most one slice per round: a
  request of n windows completes within ceil(n / slice_windows) rounds of its arrival
  plus the round already running, whatever the other sessions sent;
- bounded backlog: a stream has at most one request in flight (a second `probs` call
  for the same stream before the first returned raises RuntimeError), so the windows
  held for a session are those of one call: one frame for a live session (at most
  `max_frame_ms`), one read block for a clip. Callers apply backpressure by awaiting:
  the WebSocket reader does not read the next frame until this one is through VAD (and
  aiohttp stops reading the socket when its receive queue is full).

A request whose caller was cancelled is dropped before its next slice. Runs on the event
loop (`probs`); the model runs in the service's one thread.

`EnergyVad` is the no-model stand-in used with the no-op engine to measure the server's
own overhead: a window is speech when its RMS is above -40 dBFS.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from edge_server.background import spawn
from edge_server.vad import CONTEXT, SileroVad, VadStream, run_batched

SLICE_WINDOWS = 16  # most windows of one request in one round (32 ms each)


@dataclass(eq=False)
class _Request:
    stream: VadStream
    windows: list[np.ndarray]
    future: asyncio.Future
    probs: np.ndarray = field(init=False)
    done: int = 0  # windows decided so far

    def __post_init__(self) -> None:
        self.probs = np.empty(len(self.windows), dtype=np.float32)


class VadService:
    def __init__(self, vad: SileroVad | None, slice_windows: int = SLICE_WINDOWS) -> None:
        if slice_windows < 1:
            raise ValueError("slice_windows must be at least 1")
        self.vad = vad
        self.slice_windows = slice_windows
        self._queue: list[_Request] = []
        self._executor = ThreadPoolExecutor(1, "vad")
        self._running = False
        self.calls = 0  # rounds run
        self.windows = 0  # windows decided

    def stream(self) -> VadStream:
        return VadStream(self.vad)

    @property
    def backlog_windows(self) -> int:
        """Windows waiting for VAD, over every session."""
        return sum(len(r.windows) - r.done for r in self._queue)

    async def probs(self, stream: VadStream, samples: np.ndarray) -> np.ndarray:
        if any(r.stream is stream and not r.future.done() for r in self._queue):
            raise RuntimeError("one VAD request per stream at a time: await the previous one")
        windows = stream.take_windows(samples)
        if not windows:
            return np.zeros(0, dtype=np.float32)
        if self.vad is None:
            return energy_probs(windows)
        request = _Request(stream, windows, asyncio.get_running_loop().create_future())
        self._queue.append(request)
        if not self._running:
            self._running = True
            spawn(self._drain(), "vad")
        return await request.future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                self._queue = [r for r in self._queue if not r.future.done()]
                batch = list(self._queue)  # everyone waiting gets one slice this round
                if not batch:
                    break
                n = self.slice_windows
                slices = [(r.stream, r.windows[r.done : r.done + n]) for r in batch]
                try:
                    results = await loop.run_in_executor(
                        self._executor, run_batched, self.vad, slices)
                except Exception as exc:  # a model failure reaches every session in it
                    for r in batch:
                        self._queue.remove(r)
                        if not r.future.done():
                            r.future.set_exception(exc)
                    continue
                self.calls += 1
                for r, probs in zip(batch, results, strict=True):
                    r.probs[r.done : r.done + len(probs)] = probs
                    r.done += len(probs)
                    self.windows += len(probs)
                    if r.done == len(r.windows):
                        self._queue.remove(r)
                        if not r.future.done():
                            r.future.set_result(r.probs)
        finally:
            self._running = False

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def energy_probs(windows: list[np.ndarray]) -> np.ndarray:
    """1.0 for windows louder than -40 dBFS RMS, else 0.0."""
    x = np.stack(windows)[:, CONTEXT:]
    rms = np.sqrt(np.mean(x * x, axis=1))
    return (rms > 0.01).astype(np.float32)
