"""Silero VAD (v5/v6 ONNX) on onnxruntime: speech probability per 32 ms window.

`SileroVad` owns one CPU session and may serve many streams; each stream keeps its own
recurrent state and 64-sample context in a `VadStream`. Neither is thread-safe: use a
`SileroVad` from one thread at a time (sessions are cheap: one per thread).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_server.engine.base import EngineError
from edge_server.engine.runtime import SessionFactory
from models.catalog import load_catalog
from models.store import require_model

WINDOW = 512  # samples per VAD decision at 16 kHz (32 ms)
CONTEXT = 64  # samples of the previous window the model sees in front of each window


class SileroVad:
    """Loads silero_vad.onnx once; `stream()` makes per-stream state."""

    def __init__(self, model_path: Path | None = None) -> None:
        if model_path is None:
            model_id = load_catalog().default_vad
            model_path = require_model(model_id) / "silero_vad.onnx"
        self.session = SessionFactory(device="cpu", threads=1).create(model_path)
        names = {i.name for i in self.session.get_inputs()}
        if not {"input", "state", "sr"} <= names:
            raise EngineError(f"{model_path}: not a Silero VAD v5+ model (inputs {sorted(names)})")
        self._sr = np.array(16_000, dtype=np.int64)

    def stream(self) -> VadStream:
        return VadStream(self)

    def run(self, windows: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """windows (B, CONTEXT+WINDOW), state (2, B, 128) -> probs (B,), new state."""
        prob, new_state = self.session.run(
            None, {"input": windows, "state": state, "sr": self._sr}
        )
        return prob[:, 0], new_state


class VadStream:
    """Per-stream VAD state. Feed any number of samples; get one probability per window."""

    def __init__(self, vad: SileroVad | None) -> None:
        self.vad = vad
        self.state = np.zeros((2, 1, 128), dtype=np.float32)
        self.context = np.zeros(CONTEXT, dtype=np.float32)
        self.pending = np.zeros(0, dtype=np.float32)

    def take_windows(self, samples: np.ndarray) -> list[np.ndarray]:
        """Append samples; return the model inputs (context + window) now complete."""
        buf = np.concatenate([self.pending, samples]) if len(self.pending) else samples
        count = len(buf) // WINDOW
        inputs = []
        for k in range(count):
            window = buf[k * WINDOW : (k + 1) * WINDOW]
            inputs.append(np.concatenate([self.context, window]))
            self.context = window[-CONTEXT:]
        self.pending = buf[count * WINDOW :].copy()
        return inputs

    def feed(self, samples: np.ndarray) -> np.ndarray:
        """Probabilities for every complete 512-sample window now available (in order)."""
        assert self.vad is not None
        inputs = self.take_windows(samples)
        probs = np.empty(len(inputs), dtype=np.float32)
        for k, x in enumerate(inputs):
            p, self.state = self.vad.run(x[None], self.state)
            probs[k] = p[0]
        return probs


def run_batched(vad: SileroVad, jobs: list[tuple[VadStream, list[np.ndarray]]]) -> list[np.ndarray]:
    """Probabilities for many streams' pending windows with one model call per window index.

    Each stream's windows run in order (the model is recurrent); window k of every stream
    that has one goes into the k-th batched call. Gives the same numbers as feeding each
    stream alone. Updates each stream's state.
    """
    out = [np.empty(len(w), dtype=np.float32) for _, w in jobs]
    depth = max((len(w) for _, w in jobs), default=0)
    for k in range(depth):
        rows = [i for i, (_, w) in enumerate(jobs) if len(w) > k]
        x = np.stack([jobs[i][1][k] for i in rows])
        state = np.concatenate([jobs[i][0].state for i in rows], axis=1)
        probs, new_state = vad.run(x, state)
        for j, i in enumerate(rows):
            out[i][k] = probs[j]
            jobs[i][0].state = new_state[:, j : j + 1]
    return out
