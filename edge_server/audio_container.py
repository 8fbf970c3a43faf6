"""Compressed audio in containers libsndfile cannot read (m4a/AAC, mp4, webm, mka, ...).

Decoded with PyAV (FFmpeg) and resampled to 16 kHz mono float32 by FFmpeg's resampler,
block by block, so memory stays bounded however long the file. Used by
`edge_server.audio` as the fallback after libsndfile; raises `AudioError` with one line
for a file neither can read. Thread-safe: no shared state.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

try:
    import av
except ImportError:  # the desktop app bundle may leave FFmpeg out (docs/packaging.md)
    av = None

from edge_server.audio import AudioError

SAMPLE_RATE = 16_000


def _open(path: Path):
    if av is None:
        raise AudioError(f"{path}: this build reads wav, flac, ogg and mp3 only (no FFmpeg); "
                         "convert the file, or install Earshot with pip to read it")
    try:
        container = av.open(str(path), mode="r")
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise AudioError(f"{path}: not a readable audio file ({_reason(exc)})") from None
    if not container.streams.audio:
        container.close()
        raise AudioError(f"{path}: has no audio stream")
    return container


def _reason(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc).split(":")[-1].strip() or "unknown format"


def container_duration(path: Path) -> float:
    """Duration in seconds from the container (0.0 when it does not say)."""
    with _open(path) as container:
        stream = container.streams.audio[0]
        if stream.duration is not None and stream.time_base is not None:
            return float(stream.duration * stream.time_base)
        return container.duration / av.time_base if container.duration else 0.0


def read_container_blocks(path: Path, block_seconds: float = 10.0) -> Iterator[np.ndarray]:
    """Yield 16 kHz mono float32 blocks of about `block_seconds` of the first audio stream."""
    block = max(1, int(block_seconds * SAMPLE_RATE))
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    pending: list[np.ndarray] = []
    size = 0
    with _open(path) as container:
        try:
            for frame in container.decode(container.streams.audio[0]):
                for out in resampler.resample(frame):
                    pending.append(out.to_ndarray().reshape(-1))
                    size += out.samples
                if size >= block:
                    yield _finite(np.concatenate(pending), path)
                    pending, size = [], 0
            for out in resampler.resample(None):
                pending.append(out.to_ndarray().reshape(-1))
        except av.error.FFmpegError as exc:
            raise AudioError(f"{path}: audio data is corrupt ({_reason(exc)})") from None
    if pending:
        tail = np.concatenate(pending)
        if len(tail):
            yield _finite(tail, path)


def _finite(samples: np.ndarray, path: Path) -> np.ndarray:
    if not np.isfinite(samples).all():
        raise AudioError(f"{path} contains NaN or infinite samples")
    return samples.astype(np.float32, copy=False)
