"""Endless speech for tests: several dev utterances spoken over each other, never a pause.

`babble(seconds)` mixes `voices` tracks, each dev utterances (silence trimmed off both
ends) joined back to back in a seeded random order, so Silero VAD never sees the 600 ms
of quiet an endpoint needs: the segmenter can only cut at `max_segment_s`. Deterministic
for a given seed.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from tests.conftest import DEV, dev_rows


def trim_silence(audio: np.ndarray, frame: int = 320, level: float = 0.02) -> np.ndarray:
    """`audio` without its leading and trailing 20 ms frames quieter than `level` RMS."""
    n = len(audio) // frame
    rms = np.sqrt(np.mean(audio[: n * frame].reshape(n, frame) ** 2, axis=1))
    loud = np.nonzero(rms > level)[0]
    return audio[loud[0] * frame : (loud[-1] + 1) * frame] if len(loud) else audio[:0]


@cache
def _clips() -> tuple[np.ndarray, ...]:
    from edge_server.audio import read_audio

    clips = (trim_silence(read_audio(DEV / r["path"])) for r in dev_rows())
    return tuple(c for c in clips if len(c))


def babble(seconds: float, voices: int = 3, seed: int = 0) -> np.ndarray:
    """`seconds` of 16 kHz float32 babble (peak below 1)."""
    clips = _clips()
    rng = np.random.default_rng(seed)
    n = int(seconds * 16_000)
    out = np.zeros(n, np.float32)
    for _ in range(voices):
        parts, total = [], 0
        while total < n:
            clip = clips[rng.integers(len(clips))]
            parts.append(clip)
            total += len(clip)
        out += np.concatenate(parts)[:n]
    return out / voices
