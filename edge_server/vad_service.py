"""Voice activity detection for every session, batched across sessions, off the event loop.

`await service.probs(stream, samples)` returns the VAD probabilities of the windows
`samples` completes for that session's `VadStream`. Requests that arrive while a batch is
running are gathered into the next one; each batch is one `run_batched` call in a single
dedicated thread (onnxruntime releases the GIL). A session must await one call before
making the next (its recurrent state is updated in order).

`EnergyVad` is the no-model stand-in used with the no-op engine to measure the server's
own overhead: a window is speech when its RMS is above -40 dBFS.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from edge_server.background import spawn
from edge_server.vad import CONTEXT, SileroVad, VadStream, run_batched


class VadService:
    def __init__(self, vad: SileroVad | None) -> None:
        self.vad = vad
        self._queue: list[tuple[VadStream, list[np.ndarray], asyncio.Future]] = []
        self._executor = ThreadPoolExecutor(1, "vad")
        self._running = False
        self.calls = 0
        self.windows = 0

    def stream(self) -> VadStream:
        return VadStream(self.vad)

    async def probs(self, stream: VadStream, samples: np.ndarray) -> np.ndarray:
        windows = stream.take_windows(samples)
        if not windows:
            return np.zeros(0, dtype=np.float32)
        if self.vad is None:
            return energy_probs(windows)
        future = asyncio.get_running_loop().create_future()
        self._queue.append((stream, windows, future))
        if not self._running:
            self._running = True
            spawn(self._drain(), "vad")
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                jobs, self._queue = self._queue, []
                try:
                    results = await loop.run_in_executor(
                        self._executor, run_batched, self.vad, [(s, w) for s, w, _ in jobs])
                except Exception as exc:  # a model failure reaches every waiting session
                    for _, _, fut in jobs:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                self.calls += 1
                self.windows += sum(len(w) for _, w, _ in jobs)
                for (_, _, fut), probs in zip(jobs, results, strict=True):
                    if not fut.done():
                        fut.set_result(probs)
        finally:
            self._running = False

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def energy_probs(windows: list[np.ndarray]) -> np.ndarray:
    """1.0 for windows louder than -40 dBFS RMS, else 0.0."""
    x = np.stack(windows)[:, CONTEXT:]
    rms = np.sqrt(np.mean(x * x, axis=1))
    return (rms > 0.01).astype(np.float32)
