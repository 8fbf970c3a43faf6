"""Audio conversion and file reading: everything becomes 16 kHz mono float32.

Files are read by libsndfile (wav, flac, ogg/vorbis/opus, mp3, aiff, ...), else by FFmpeg
through PyAV (m4a/aac, mp4, webm, mka, wma, ...: `edge_server.audio_container`).

Pure functions plus a streaming file reader. `read_audio_blocks()` keeps memory bounded
(one block plus the resampler's state), so a two-hour file never sits in memory whole.
Thread-safe: no shared state.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 16_000
MIN_SOURCE_RATE = 4_000
MAX_SOURCE_RATE = 384_000


class AudioError(ValueError):
    """Audio that cannot be used. The message is one line, fit to show a user."""


def to_mono(samples: np.ndarray) -> np.ndarray:
    """(frames,) or (frames, channels) -> (frames,) float32 by averaging channels."""
    if samples.ndim == 1:
        return samples.astype(np.float32, copy=False)
    if samples.ndim != 2:
        raise AudioError(f"audio must be 1-D or (frames, channels), got shape {samples.shape}")
    return samples.mean(axis=1, dtype=np.float32)


def check_rate(rate: int) -> None:
    """Refuse sample rates no microphone or file format really produces."""
    if not MIN_SOURCE_RATE <= rate <= MAX_SOURCE_RATE:
        raise AudioError(
            f"unsupported sample rate {rate} Hz (supported: {MIN_SOURCE_RATE}-{MAX_SOURCE_RATE})"
        )


def resample(samples: np.ndarray, rate: int) -> np.ndarray:
    """Mono float32 at `rate` -> mono float32 at 16 kHz (soxr, high quality)."""
    check_rate(rate)
    if rate == SAMPLE_RATE:
        return samples.astype(np.float32, copy=False)
    return soxr.resample(samples, rate, SAMPLE_RATE, quality="HQ").astype(np.float32, copy=False)


def check_finite(samples: np.ndarray, what: str) -> None:
    """Raise AudioError if `samples` holds NaN or infinity."""
    if not np.isfinite(samples).all():
        raise AudioError(f"{what} contains NaN or infinite samples")


def pcm16_to_float(data: bytes) -> np.ndarray:
    """Little-endian signed 16-bit PCM bytes -> float32 in [-1, 1)."""
    if len(data) % 2:
        raise AudioError("PCM16 data has an odd number of bytes")
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def float_to_pcm16(samples: np.ndarray) -> bytes:
    """float32 in [-1, 1] -> little-endian PCM16 bytes (clipped)."""
    clipped = np.clip(samples, -1.0, 32767 / 32768)
    return (clipped * 32768.0).round().astype("<i2").tobytes()


def _check_path(path: Path) -> None:
    if not path.exists():
        raise AudioError(f"{path}: no such file")
    if path.is_dir():
        raise AudioError(f"{path}: is a folder, not an audio file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: file is empty")


def _open(path: Path) -> sf.SoundFile | None:
    """The file opened by libsndfile, or None when libsndfile does not know its format."""
    _check_path(path)
    try:
        return sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError):
        return None


def audio_duration(path: Path) -> float:
    """Duration in seconds from the file header (no decoding)."""
    f = _open(Path(path))
    if f is None:
        from edge_server.audio_container import container_duration

        return container_duration(Path(path))
    with f:
        return f.frames / f.samplerate if f.samplerate else 0.0


def read_audio_blocks(path: Path, block_seconds: float = 10.0) -> Iterator[np.ndarray]:
    """Yield 16 kHz mono float32 blocks of `path` (wav, flac, ogg, ... via libsndfile).

    Formats libsndfile cannot read (m4a, mp4, webm, ...) are decoded with FFmpeg (PyAV).
    Raises AudioError for a missing, empty, unreadable or non-finite file.
    """
    path = Path(path)
    f = _open(path)
    if f is None:
        from edge_server.audio_container import read_container_blocks

        yield from read_container_blocks(path, block_seconds)
        return
    with f:
        rate = f.samplerate
        check_rate(rate)
        stream = None if rate == SAMPLE_RATE else soxr.ResampleStream(
            rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ"
        )
        block_frames = max(1, int(block_seconds * rate))
        try:
            for raw in f.blocks(blocksize=block_frames, dtype="float32", always_2d=True):
                mono = to_mono(raw)
                check_finite(mono, str(path))
                out = mono if stream is None else stream.resample_chunk(mono)
                if len(out):
                    yield out
        except sf.LibsndfileError as exc:
            raise AudioError(f"{path}: audio data is corrupt ({exc})") from None
        if stream is not None:
            tail = stream.resample_chunk(np.zeros(0, np.float32), last=True)
            if len(tail):
                yield tail


def read_audio(path: Path) -> np.ndarray:
    """The whole file as 16 kHz mono float32 (use read_audio_blocks for long files)."""
    blocks = list(read_audio_blocks(path))
    return np.concatenate(blocks) if blocks else np.zeros(0, np.float32)
