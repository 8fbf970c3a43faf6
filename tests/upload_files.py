"""Audio files for upload tests, written with PyAV: every allowed format, long Opus files."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from tests.conftest import DEV, dev_rows, speech_with_pauses

# name -> (FFmpeg muxer, encoder, sample rate, bit rate or None), one per allowed format
FORMATS: dict[str, tuple[str, str, int, int | None]] = {
    "wav": ("wav", "pcm_s16le", 16_000, None),
    "flac": ("flac", "flac", 44_100, None),
    "mp3": ("mp3", "libmp3lame", 22_050, 48_000),
    "ogg": ("ogg", "libopus", 48_000, 24_000),
    "m4a": ("ipod", "aac", 44_100, 64_000),
    "mp4": ("mp4", "aac", 44_100, 64_000),
    "webm": ("webm", "libopus", 48_000, 24_000),
    "aac": ("adts", "aac", 16_000, 48_000),
    "aiff": ("aiff", "pcm_s16be", 16_000, None),
    "caf": ("caf", "pcm_s16le", 16_000, None),
    "wma": ("asf", "wmav2", 16_000, 32_000),
    "mpeg": ("mpeg", "mp2", 16_000, 64_000),
}
LOOP_SETS = ("sherpa-test-wavs", "librispeech-test-clean-kw", "pocketsphinx-testdata")


def encode(samples: np.ndarray, path: Path, muxer: str, codec: str, rate: int,
           bit_rate: int | None = None, options: dict | None = None) -> Path:
    """Write 16 kHz mono float32 `samples` to `path` with the given muxer and encoder."""
    with av.open(str(path), "w", format=muxer, options=options or {}) as container:
        stream = container.add_stream(codec, rate=rate, layout="mono")
        if bit_rate:
            stream.bit_rate = bit_rate
        resampler = av.AudioResampler(format=stream.format.name, layout="mono", rate=rate)
        for start in range(0, max(len(samples), 1), 16_000 * 60):
            chunk = samples[start : start + 16_000 * 60].astype(np.float32)
            frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="flt",
                                               layout="mono")
            frame.sample_rate, frame.time_base, frame.pts = 16_000, Fraction(1, 16_000), start
            for out in resampler.resample(frame):
                for packet in stream.encode(out):
                    container.mux(packet)
        for out in resampler.resample(None):
            for packet in stream.encode(out):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def encode_format(samples: np.ndarray, folder: Path, name: str) -> Path:
    muxer, codec, rate, bit_rate = FORMATS[name]
    return encode(samples, folder / f"speech.{name}", muxer, codec, rate, bit_rate)


def speech_loop() -> tuple[np.ndarray, str]:
    """The 18 dev sentences with pauses (~101 s) and their transcript."""
    rows = dev_rows(LOOP_SETS)
    audio = speech_with_pauses([DEV / r["path"] for r in rows], pause_s=0.8)
    return audio, " ".join(r["transcript"] for r in rows)


def long_opus(path: Path, loops: int, bit_rate: int = 12_000) -> tuple[Path, float, str]:
    """`loops` times the dev speech loop as low-bit-rate Ogg Opus (fast: ~10 s per hour).

    Returns (path, audio seconds, reference transcript). Encoded loop by loop, so memory
    holds one loop of 16 kHz audio, never the whole file.
    """
    audio, text = speech_loop()
    with av.open(str(path), "w", format="ogg") as container:
        stream = container.add_stream("libopus", rate=16_000, layout="mono")
        stream.bit_rate = bit_rate
        stream.options = {"compression_level": "0", "application": "voip"}
        pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16).reshape(1, -1)
        for i in range(loops):
            frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
            frame.sample_rate, frame.time_base = 16_000, Fraction(1, 16_000)
            frame.pts = i * len(audio)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path, loops * len(audio) / 16_000, " ".join([text] * loops)
