"""OpenAI audio-transcription response bodies and error bodies. Pure functions.

Formats: `json` ({"text", "usage"}), `text`, `srt`, `vtt`, `verbose_json` (task, language,
duration, text, segments). Segment fields Moonshine cannot know are `null`:
`avg_logprob` and `no_speech_prob` (the engine is greedy and reports no scores), and
`tokens` is empty; `compression_ratio` is computed from the text as Whisper does (zlib).
"""

from __future__ import annotations

import zlib

from edge_server.formats import Transcript, to_srt, to_vtt

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
LANGUAGE_NAMES = {"en": "english"}


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    """OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def compression_ratio(text: str) -> float | None:
    data = text.encode("utf-8")
    return round(len(data) / len(zlib.compress(data)), 4) if data else None


def _usage(t: Transcript) -> dict:
    return {"type": "duration", "seconds": max(0, round(t.duration + 0.4999))}


def verbose_json(t: Transcript, language: str) -> dict:
    segments = [
        {"id": i, "seek": 0, "start": round(s.start, 3), "end": round(s.end, 3),
         "text": s.text, "tokens": [], "temperature": 0.0, "avg_logprob": None,
         "compression_ratio": compression_ratio(s.text), "no_speech_prob": None}
        for i, s in enumerate(seg for seg in t.segments if seg.text)
    ]
    return {"task": "transcribe", "language": LANGUAGE_NAMES.get(language, language),
            "duration": round(t.duration, 3), "text": t.text, "segments": segments,
            "usage": _usage(t)}


def render_response(t: Transcript, response_format: str, language: str) -> tuple[str, object]:
    """(content type, body): a dict for the JSON formats, a str for the text ones."""
    if response_format == "json":
        return "application/json", {"text": t.text, "usage": _usage(t)}
    if response_format == "verbose_json":
        return "application/json", verbose_json(t, language)
    if response_format == "srt":
        return "text/plain", to_srt(t)
    if response_format == "vtt":
        return "text/plain", to_vtt(t)
    return "text/plain", t.text + "\n"
