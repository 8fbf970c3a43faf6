"""Transcript output formats: txt, json, srt, vtt. Pure functions."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

FORMATS = ("txt", "json", "srt", "vtt")


@dataclass(frozen=True)
class TimedText:
    """Text of one segment with its start/end in seconds."""

    start: float
    end: float
    text: str


@dataclass
class Transcript:
    """A whole file's (or dictation's) transcript."""

    source: str
    segments: list[TimedText] = field(default_factory=list)
    duration: float = 0.0

    @property
    def text(self) -> str:
        return " ".join(s.text for s in self.segments if s.text).strip()

    def as_dict(self) -> dict:
        return {
            "file": self.source,
            "text": self.text,
            "segments": [
                {"start": round(s.start, 3), "end": round(s.end, 3), "text": s.text}
                for s in self.segments
                if s.text
            ],
        }


def _clock(seconds: float, sep: str) -> str:
    ms = max(0, round(seconds * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def to_srt(t: Transcript) -> str:
    blocks = []
    for i, s in enumerate((s for s in t.segments if s.text), start=1):
        blocks.append(f"{i}\n{_clock(s.start, ',')} --> {_clock(s.end, ',')}\n{s.text}\n")
    return "\n".join(blocks)


def to_vtt(t: Transcript) -> str:
    cues = [
        f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{s.text}\n"
        for s in t.segments
        if s.text
    ]
    return "WEBVTT\n\n" + "\n".join(cues)


def to_txt(t: Transcript) -> str:
    return t.text + "\n"


def render(transcripts: Sequence[Transcript], fmt: str) -> str:
    """One document for one or more transcripts (srt/vtt: exactly one transcript)."""
    if fmt == "json":
        return json.dumps([t.as_dict() for t in transcripts], ensure_ascii=False, indent=2) + "\n"
    if fmt == "txt":
        return "".join(to_txt(t) for t in transcripts)
    if len(transcripts) != 1:
        raise ValueError(f"{fmt} holds one transcript; write several with -o DIR")
    return to_srt(transcripts[0]) if fmt == "srt" else to_vtt(transcripts[0])
