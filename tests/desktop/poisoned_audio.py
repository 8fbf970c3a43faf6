"""Speech with one poisoned sentence: a server started with POISON in its environment dies
on it (its worker crashes on a full-scale sample; twice, and the server fails the segment
with `decode_failed`). The hook is `EARSHOT_WORKER_FAULT` (edge_server/worker_main.py)."""

from __future__ import annotations

import numpy as np

from edge_server.audio import read_audio
from tests.conftest import DEV, dev_rows

POISON = {"EARSHOT_WORKER_FAULT": "crash-if-peak-above=0.999"}
ROWS = dev_rows(("pocketsphinx-testdata",))[:3]


def poisoned_speech() -> tuple[np.ndarray, tuple[float, float]]:
    """ROWS between 1 s pauses, the middle one holding one full-scale sample. Returns the
    16 kHz audio and the middle sentence's span in seconds."""
    parts = [read_audio(DEV / r["path"]) for r in ROWS]
    poisoned = parts[1].copy()
    poisoned[len(poisoned) // 2] = 1.0
    gap = np.zeros(16_000, np.float32)
    start = (2 * len(gap) + len(parts[0])) / 16_000
    audio = np.concatenate([gap, parts[0], gap, poisoned, gap, parts[2], gap])
    return audio, (start, start + len(poisoned) / 16_000)
