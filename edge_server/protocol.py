"""Earshot streaming protocol v1: message shapes, binary frame layout, error and close codes.

Shared by the server and the client; pure (no I/O). The normative description is
docs/protocol.md; keep the two in step.

Binary audio frame: 8-byte little-endian unsigned sequence number, then PCM16 LE samples
(mono, the sample rate declared in `hello`). Text messages are JSON objects with `type`.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = (1,)
STREAM_PATH = "/v1/stream"
FRAME_HEADER = struct.Struct("<Q")
SUPPORTED_RATES = (8_000, 11_025, 12_000, 16_000, 22_050, 24_000, 32_000, 44_100, 48_000)
MAX_SESSION_ID = 128
MAX_PING_TOKEN = 64  # longest string `t` a pong echoes
MAX_PING_INT = 2**53  # largest integer `t` a pong echoes (exact in every JSON reader)
MAX_ERROR_TEXT = 200  # `error.message` is cut to this many characters


class ErrorCode(StrEnum):
    BAD_MESSAGE = "bad_message"  # not JSON, unknown type, missing/invalid field
    BAD_FRAME = "bad_frame"  # binary frame too short, odd PCM length, audio after `end`
    FRAME_TOO_LARGE = "frame_too_large"
    SEQUENCE_GAP = "sequence_gap"  # a frame skipped sequence numbers
    UNSUPPORTED_VERSION = "unsupported_version"
    UNSUPPORTED_AUDIO = "unsupported_audio"
    UNAUTHORIZED = "unauthorized"
    HANDSHAKE_TIMEOUT = "handshake_timeout"
    IDLE_TIMEOUT = "idle_timeout"
    SESSION_REPLACED = "session_replaced"  # the same session id connected again
    SESSION_UNKNOWN = "session_unknown"  # resume of a session that expired or never was
    RATE_LIMITED = "rate_limited"
    DECODE_FAILED = "decode_failed"  # a segment could not be decoded (not fatal)
    OVERLOADED = "overloaded"
    SHUTTING_DOWN = "shutting_down"
    INTERNAL = "internal"
    CLIENT_TOO_SLOW = "client_too_slow"  # close reason only: the client does not read
    UNKNOWN_MODEL = "unknown_model"  # hello asked for a model the server does not serve


class CloseCode(IntEnum):
    NORMAL = 1000  # after `ended`
    GOING_AWAY = 1001  # server shutting down (after draining)
    BAD_MESSAGE = 4400
    UNAUTHORIZED = 4401
    HANDSHAKE_TIMEOUT = 4408
    IDLE_TIMEOUT = 4409
    SESSION_REPLACED = 4410
    SESSION_UNKNOWN = 4411
    UNKNOWN_MODEL = 4404  # hello's `model` is not served (the message lists the served ones)
    FRAME_TOO_LARGE = 4413
    UNSUPPORTED = 4415  # protocol version or audio format
    CLIENT_TOO_SLOW = 4419  # send queue over its bound; no error message; resumable
    RATE_LIMITED = 4429
    INTERNAL = 4500
    OVERLOADED = 4503


ERROR_CLOSE = {
    ErrorCode.BAD_MESSAGE: CloseCode.BAD_MESSAGE,
    ErrorCode.BAD_FRAME: CloseCode.BAD_MESSAGE,
    ErrorCode.SEQUENCE_GAP: CloseCode.BAD_MESSAGE,
    ErrorCode.FRAME_TOO_LARGE: CloseCode.FRAME_TOO_LARGE,
    ErrorCode.UNSUPPORTED_VERSION: CloseCode.UNSUPPORTED,
    ErrorCode.UNSUPPORTED_AUDIO: CloseCode.UNSUPPORTED,
    ErrorCode.UNAUTHORIZED: CloseCode.UNAUTHORIZED,
    ErrorCode.HANDSHAKE_TIMEOUT: CloseCode.HANDSHAKE_TIMEOUT,
    ErrorCode.IDLE_TIMEOUT: CloseCode.IDLE_TIMEOUT,
    ErrorCode.SESSION_REPLACED: CloseCode.SESSION_REPLACED,
    ErrorCode.SESSION_UNKNOWN: CloseCode.SESSION_UNKNOWN,
    ErrorCode.RATE_LIMITED: CloseCode.RATE_LIMITED,
    ErrorCode.OVERLOADED: CloseCode.OVERLOADED,
    ErrorCode.SHUTTING_DOWN: CloseCode.GOING_AWAY,
    ErrorCode.INTERNAL: CloseCode.INTERNAL,
    ErrorCode.CLIENT_TOO_SLOW: CloseCode.CLIENT_TOO_SLOW,
    ErrorCode.UNKNOWN_MODEL: CloseCode.UNKNOWN_MODEL,
}
MAX_MODEL_ID = 100  # longest `model` a hello may name


class ProtocolError(Exception):
    """A client broke the protocol. Carries the error code sent back before closing."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def close_code(self) -> int:
        return int(ERROR_CLOSE.get(self.code, CloseCode.BAD_MESSAGE))


@dataclass(frozen=True)
class Hello:
    """The first client message."""

    session: str
    token: str | None
    sample_rate: int
    resume: bool  # True: continue an existing session (after a dropped connection)
    last_final: int  # resume: highest final segment id the client holds (-1: none)
    partials: bool
    model: str | None = None  # catalog id of the model to decode with (None: the default)


def _field(msg: dict, name: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    if name not in msg:
        if default is ...:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"hello: missing field '{name}'")
        return default
    value = msg[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"hello: field '{name}' has the wrong type")
    return value


def parse_json(text: str) -> dict:
    """A client text message as a dict with a string `type`, or ProtocolError."""
    try:
        msg = json.loads(text)
    except (ValueError, RecursionError):  # JSONDecodeError, huge integers
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "text message is not valid JSON") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "message must be a JSON object with a 'type'")
    return msg


def parse_hello(msg: dict) -> Hello:
    """Validate a `hello` message."""
    if msg.get("type") != "hello":
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "the first message must be 'hello'")
    version = _field(msg, "protocol", int)
    if version not in SUPPORTED_VERSIONS:
        raise ProtocolError(ErrorCode.UNSUPPORTED_VERSION,
                            f"protocol version {version} is not supported (supported: "
                            f"{', '.join(map(str, SUPPORTED_VERSIONS))})")
    session = _field(msg, "session", str)
    if not 1 <= len(session) <= MAX_SESSION_ID or not session.isprintable():
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "hello: 'session' must be 1-128 printable chars")
    audio = _field(msg, "audio", dict)
    encoding = audio.get("encoding", "pcm_s16le")
    rate = audio.get("sample_rate", 16_000)
    channels = audio.get("channels", 1)
    if not isinstance(rate, int) or isinstance(rate, bool) or type(channels) is not int:
        raise ProtocolError(ErrorCode.BAD_MESSAGE,
                            "hello: audio.sample_rate and audio.channels must be integers")
    if not isinstance(encoding, str):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "hello: audio.encoding must be a string")
    if encoding != "pcm_s16le" or channels != 1:
        raise ProtocolError(ErrorCode.UNSUPPORTED_AUDIO,
                            "audio must be pcm_s16le mono (got "
                            f"{encoding[:40]!r}, {channels} channels)")
    if rate not in SUPPORTED_RATES:
        raise ProtocolError(ErrorCode.UNSUPPORTED_AUDIO,
                            f"sample rate {rate!r} is not supported (supported: "
                            f"{', '.join(map(str, SUPPORTED_RATES))})")
    token = _field(msg, "token", (str, type(None)), None)
    model = _field(msg, "model", (str, type(None)), None)
    if model is not None and (not 1 <= len(model) <= MAX_MODEL_ID or not model.isprintable()):
        raise ProtocolError(ErrorCode.BAD_MESSAGE,
                            f"hello: 'model' must be 1-{MAX_MODEL_ID} printable chars")
    return Hello(
        session=session,
        token=token,
        sample_rate=rate,
        resume=bool(_field(msg, "resume", bool, False)),
        last_final=_field(msg, "last_final", int, -1),
        partials=bool(_field(msg, "partials", bool, True)),
        model=model,
    )


def encode_frame(seq: int, pcm16: bytes) -> bytes:
    """A binary audio frame."""
    return FRAME_HEADER.pack(seq) + pcm16


def decode_frame(data: bytes, max_payload: int) -> tuple[int, bytes]:
    """(sequence number, PCM16 payload) of a binary frame, or ProtocolError."""
    if len(data) < FRAME_HEADER.size:
        raise ProtocolError(ErrorCode.BAD_FRAME, "binary frame shorter than its 8-byte header")
    payload = data[FRAME_HEADER.size :]
    if len(payload) > max_payload:
        raise ProtocolError(ErrorCode.FRAME_TOO_LARGE,
                            f"frame payload {len(payload)} bytes exceeds {max_payload}")
    if len(payload) % 2:
        raise ProtocolError(ErrorCode.BAD_FRAME, "PCM16 payload has an odd number of bytes")
    (seq,) = FRAME_HEADER.unpack_from(data)
    return seq, payload


def ping_token(t: object) -> int | float | str | None:
    """What a pong echoes of a ping's `t`: an integer up to 2**53, a finite float, or a
    string of at most MAX_PING_TOKEN characters; anything else becomes null."""
    if isinstance(t, bool) or t is None:
        return None
    if isinstance(t, int):
        return t if abs(t) <= MAX_PING_INT else None
    if isinstance(t, float):
        return t if math.isfinite(t) else None
    if isinstance(t, str):
        return t if len(t) <= MAX_PING_TOKEN else None
    return None


def error_message(code: ErrorCode, message: str, fatal: bool = True) -> dict:
    """An `error` message; `message` is cut to MAX_ERROR_TEXT characters."""
    if len(message) > MAX_ERROR_TEXT:
        message = message[: MAX_ERROR_TEXT - 1] + "…"
    return {"type": "error", "code": str(code), "message": message, "fatal": fatal}
