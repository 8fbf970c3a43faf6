"""Encode test audio into compressed containers with PyAV (m4a/AAC, webm/Opus)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

CODECS = {".m4a": ("aac", 44_100), ".webm": ("libopus", 48_000), ".mp4": ("aac", 44_100)}


def encode(samples: np.ndarray, rate: int, path: Path) -> Path:
    """Write mono float32 `samples` (at `rate`) to `path`, codec chosen by its suffix."""
    codec, out_rate = CODECS[path.suffix]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=out_rate, layout="mono")
        resampler = av.AudioResampler(format=stream.format.name, layout="mono", rate=out_rate)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1).astype(np.float32),
                                           format="flt", layout="mono")
        frame.sample_rate = rate
        frame.time_base = Fraction(1, rate)
        frame.pts = 0
        for chunk in [*resampler.resample(frame), *resampler.resample(None)]:
            for packet in stream.encode(chunk):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path
