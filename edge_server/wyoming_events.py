"""Wyoming wire input: bounded event reading and audio-chunk conversion. Pure, no I/O state.

`read_event()` reads one event with every size checked before it is read (`BadEvent` when
the stream cannot be trusted). `Utterance` turns audio-chunk events of any supported rate,
width and channel count into 16 kHz mono float32 blocks, at most `max_s` seconds
(`RequestError` with a Wyoming error code otherwise). Used by `wyoming_server` on the
event loop; one `Utterance` per audio-start.
"""

from __future__ import annotations

import asyncio
import json

import numpy as np
import soxr
from wyoming.event import Event

from edge_server.audio import SAMPLE_RATE, AudioError, check_rate, pcm16_to_float, to_mono

WIDTHS = (1, 2, 4)
MAX_CHANNELS = 16
MAX_HEADER_BYTES = 64 * 1024  # the StreamReader's line limit
MAX_DATA_BYTES = 64 * 1024
MAX_PAYLOAD_BYTES = 4 * 1024 * 1024  # one audio chunk (~11 s of 48 kHz stereo 16-bit)
BLOCK_SAMPLES = 10 * SAMPLE_RATE  # blocks handed to the clip transcriber


class BadEvent(ValueError):
    """An event this server cannot read; the stream cannot be trusted after it."""


class RequestError(Exception):
    """A refused request: becomes an `error` event with `code`."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code = code


# ---- events ---------------------------------------------------------------------------
def _length(header: dict, key: str, limit: int) -> int:
    value = header.get(key)
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BadEvent(f"{key} must be a non-negative integer")
    if value > limit:
        raise BadEvent(f"{key} {value} is over the limit of {limit} bytes")
    return value


def _json_object(raw: bytes, what: str) -> dict:
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):  # also bad UTF-8, huge integers, deep nesting
        raise BadEvent(f"{what} is not JSON") from None
    if not isinstance(value, dict):
        raise BadEvent(f"{what} is not a JSON object")
    return value


async def read_event(reader: asyncio.StreamReader) -> Event | None:
    """The next Wyoming event, None at end of stream (or a stream cut mid-event).

    Like `wyoming.event.async_read_event`, but sizes are checked before reading, so a client
    cannot make the server buffer more than one bounded event; raises BadEvent.
    """
    try:
        line = await reader.readline()
    except ValueError:  # a line over the reader's limit
        raise BadEvent(f"event header is longer than {MAX_HEADER_BYTES} bytes") from None
    if not line:
        return None
    header = _json_object(line, "event header")
    if not isinstance(header.get("type"), str):
        raise BadEvent("event has no type")
    data = header.get("data")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise BadEvent("event data is not a JSON object")
    data_length = _length(header, "data_length", MAX_DATA_BYTES)
    payload_length = _length(header, "payload_length", MAX_PAYLOAD_BYTES)
    try:
        if data_length:
            data.update(_json_object(await reader.readexactly(data_length), "event data"))
        payload = await reader.readexactly(payload_length) if payload_length else None
    except asyncio.IncompleteReadError:
        return None
    return Event(type=header["type"], data=data, payload=payload)


# ---- audio ----------------------------------------------------------------------------
def _int_field(data: dict, key: str) -> int:
    value = data.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise RequestError("bad_event", f"audio field '{key}' must be an integer")
    return value


def audio_format(event: Event) -> tuple[int, int, int]:
    """(rate, width, channels) of an audio-start/audio-chunk; RequestError if unusable."""
    rate, width, channels = (_int_field(event.data, k) for k in ("rate", "width", "channels"))
    try:
        check_rate(rate)
    except AudioError as exc:
        raise RequestError("unsupported_audio", str(exc)) from None
    if width not in WIDTHS:
        raise RequestError("unsupported_audio",
                           f"unsupported sample width {width} bytes (supported: 1, 2, 4)")
    if not 1 <= channels <= MAX_CHANNELS:
        raise RequestError("unsupported_audio",
                           f"unsupported channel count {channels} (supported: 1-{MAX_CHANNELS})")
    return rate, width, channels


def pcm_to_mono(data: bytes, width: int, channels: int) -> np.ndarray:
    """Interleaved little-endian PCM (width 1 unsigned, 2 and 4 signed) -> mono float32."""
    if width == 2:
        samples = pcm16_to_float(data)
    elif width == 1:
        samples = (np.frombuffer(data, np.uint8).astype(np.float32) - 128.0) / 128.0
    else:
        samples = (np.frombuffer(data, "<i4") / 2_147_483_648.0).astype(np.float32)
    return to_mono(samples.reshape(-1, channels)) if channels > 1 else samples


class Utterance:
    """One audio-start..audio-stop stream as 16 kHz mono float32, at most `max_s` seconds."""

    def __init__(self, max_s: float) -> None:
        self.max_s = max_s
        self.seconds = 0.0  # of audio received, at its own rate
        self.blocks: list[np.ndarray] = []
        self._rate: int | None = None
        self._stream: soxr.ResampleStream | None = None

    def add(self, event: Event) -> None:
        """Convert and keep one audio-chunk; RequestError for a bad or over-long one."""
        rate, width, channels = audio_format(event)
        data = event.payload or b""
        if len(data) % (width * channels):
            raise RequestError("unsupported_audio", "audio chunk is not a whole number of frames")
        self.seconds += len(data) / (width * channels) / rate
        if self.seconds > self.max_s:
            raise RequestError("too_long", f"utterance is longer than {self.max_s:g} s")
        if rate != self._rate:
            self._flush()
            self._rate = rate
            self._stream = None if rate == SAMPLE_RATE else soxr.ResampleStream(
                rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
        mono = pcm_to_mono(data, width, channels)
        self._keep(mono if self._stream is None else self._stream.resample_chunk(mono))

    def _keep(self, samples: np.ndarray) -> None:
        if len(samples):
            self.blocks.append(samples)

    def _flush(self) -> None:
        if self._stream is not None:
            self._keep(self._stream.resample_chunk(np.zeros(0, np.float32), last=True))
            self._stream = None

    def finish(self) -> list[np.ndarray]:
        """The whole utterance as ~10 s blocks (what the clip transcriber reads)."""
        self._flush()
        audio = np.concatenate(self.blocks) if self.blocks else np.zeros(0, np.float32)
        self.blocks = []
        return [audio[i : i + BLOCK_SAMPLES] for i in range(0, len(audio), BLOCK_SAMPLES)]
