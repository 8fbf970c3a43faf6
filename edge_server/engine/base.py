"""The engine contract every model family implements."""

from __future__ import annotations

import abc
from collections.abc import Sequence

import numpy as np


class EngineError(RuntimeError):
    """The engine cannot be created or cannot run (bad device, broken model, bad input)."""


class AsrEngine(abc.ABC):
    """Batched offline recognizer: 16 kHz mono float32 arrays in, texts out.

    Not thread-safe; one instance per thread/process. `transcribe_batch` returns texts in
    input order and gives each input the same text it would get alone (up to float
    rounding near ties, see docs/engine.md).
    """

    model_id: str
    sample_rate: int = 16_000

    @property
    @abc.abstractmethod
    def provider(self) -> str:
        """The execution provider the sessions really run on, e.g. 'CPUExecutionProvider'."""

    @property
    def device(self) -> str:
        """'cuda' or 'cpu', as really used."""
        return "cuda" if self.provider.startswith("CUDA") else "cpu"

    @abc.abstractmethod
    def transcribe_batch(self, audios: Sequence[np.ndarray]) -> list[str]:
        """Texts for each 16 kHz mono float32 array, in order. Empty audio gives ''."""

    def transcribe(self, audio: np.ndarray) -> str:
        """One utterance."""
        return self.transcribe_batch([audio])[0]


def validate_batch(audios: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Check and normalise engine input: 1-D, finite, float32."""
    out = []
    for i, a in enumerate(audios):
        arr = np.asarray(a, dtype=np.float32)
        if arr.ndim != 1:
            raise EngineError(f"input {i}: expected 1-D mono audio, got shape {arr.shape}")
        if not np.isfinite(arr).all():
            raise EngineError(f"input {i}: audio contains NaN or infinite samples")
        out.append(arr)
    return out
