"""Reference speech for load tests: utterances joined with pauses, one order per stream,
and the segments each stream is expected to yield.

Pure (reads audio files, no network); any thread. Utterances come from the dev speech
(`dev_dir()`: `../shared/speech/dev` beside the repo, else the copy committed under
`tests/data/speech`; read as data, never imported) or from `--audio` files: a
`transcripts.tsv` (columns `set`, `path`, `transcript`) brings its references; plain audio
files have none, and their segments are then checked for arrival only, not for text.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_server.audio import read_audio
from edge_server.evaluation import read_references

RATE = 16_000
REPO = Path(__file__).resolve().parents[1]
# The LibriSpeech/LibriVox sentences (18): real read speech, 1-17 s each.
SENTENCE_SETS = ("sherpa-test-wavs", "librispeech-test-clean-kw", "pocketsphinx-testdata")
LEAD_S = 0.5  # silence before the first utterance
PAUSE_S = (1.0, 1.8)  # silence added between utterances (beyond each clip's own margins)
TAIL_S = 1.5  # silence after the last one: every segment ends by the endpoint, not by `end`
WINDOW = 160  # 10 ms: the grain of the speech bounds


class SpeechError(ValueError):
    """No usable reference speech (a clear message for the command line)."""


@dataclass(frozen=True)
class Clip:
    """One utterance: 16 kHz mono float32, its transcript (None: unknown) and where its
    speech starts and ends inside the clip (seconds; energy based, see `speech_bounds`)."""

    audio: np.ndarray
    text: str | None
    speech_start: float
    speech_end: float
    name: str


@dataclass(frozen=True)
class Expected:
    """A segment a stream must yield: `index` in the stream, speech `start`..`end` in
    stream seconds, and the reference `text` (None: not scored)."""

    index: int
    start: float
    end: float
    text: str | None


@dataclass(frozen=True)
class Script:
    """The audio of one stream (16 kHz float32) and its expected segments, in order."""

    audio: np.ndarray
    segments: tuple[Expected, ...]

    @property
    def seconds(self) -> float:
        return len(self.audio) / RATE


def dev_dir() -> Path | None:
    """`$EARSHOT_SHARED/speech/dev` (default `../shared` beside the repo) when it holds a
    transcripts.tsv, else the repo's `tests/data/speech`; None when neither exists (an
    installed copy without the repo: pass --audio)."""
    shared = Path(os.environ.get("EARSHOT_SHARED", REPO.parent / "shared")) / "speech" / "dev"
    for folder in (shared, REPO / "tests" / "data" / "speech"):
        if (folder / "transcripts.tsv").is_file():
            return folder
    return None


def speech_bounds(audio: np.ndarray) -> tuple[float, float]:
    """(start, end) in seconds of the speech in a clip: the first and last 10 ms window
    whose RMS is 12 dB above the clip's noise floor (its 10th-percentile window) and
    within 30 dB of its loudest window (and above -50 dBFS). Room tone before and after
    is left out, so `end` is about when the talker stopped (the server's VAD, with its
    hangover, puts it 0.1-0.2 s later on the dev speech)."""
    n = len(audio) // WINDOW
    if n == 0:
        return 0.0, len(audio) / RATE
    rms = np.sqrt(np.mean(audio[: n * WINDOW].reshape(n, WINDOW).astype(np.float64) ** 2,
                          axis=1))
    floor = float(np.percentile(rms, 10))
    loud = np.flatnonzero(rms >= max(4 * floor, 10 ** (-30 / 20) * rms.max(),
                                     10 ** (-50 / 20)))
    if loud.size == 0:
        return 0.0, len(audio) / RATE
    return loud[0] * WINDOW / RATE, (loud[-1] + 1) * WINDOW / RATE


def load_clips(paths: list[Path] | None = None,
               sets: tuple[str, ...] = SENTENCE_SETS) -> list[Clip]:
    """The utterances: a transcripts.tsv's rows (every set when given with --audio, `sets`
    for the default dev speech), or plain audio files without transcripts.

    Raises SpeechError when nothing usable is found, naming what was looked for."""
    items: list[tuple[Path, str | None]] = []
    if not paths:
        folder = dev_dir()
        if folder is None:
            raise SpeechError("no dev speech found (../shared/speech/dev or "
                              "tests/data/speech); give utterances with --audio")
        items = [(r.path, r.transcript) for r in read_references(folder / "transcripts.tsv")
                 if r.set in sets]
    else:
        for path in paths:
            path = Path(path)
            if not path.is_file():
                raise SpeechError(f"{path}: no such file")
            if path.suffix.lower() == ".tsv":
                items += [(r.path, r.transcript) for r in read_references(path)]
            else:
                items.append((path, None))
    clips = []
    for path, text in items:
        audio = read_audio(path)
        if len(audio) < RATE // 4:
            continue  # under 250 ms: shorter than the server's shortest segment
        start, end = speech_bounds(audio)
        clips.append(Clip(audio, text, start, end, str(path)))
    if not clips:
        raise SpeechError("no utterance of at least 250 ms in the given audio")
    return clips


def build_script(clips: list[Clip], seconds: float, seed: int) -> Script:
    """One stream: LEAD_S of silence, then utterances in an order shuffled by `seed`,
    each followed by a pause drawn from PAUSE_S, until at least `seconds` of audio (at
    least one utterance), then TAIL_S of silence."""
    rng = random.Random(seed)
    order = list(range(len(clips)))
    rng.shuffle(order)
    parts = [np.zeros(int(LEAD_S * RATE), np.float32)]
    at = LEAD_S
    segments: list[Expected] = []
    i = 0
    while not segments or at < seconds:
        clip = clips[order[i % len(order)]]
        segments.append(Expected(len(segments), round(at + clip.speech_start, 3),
                                 round(at + clip.speech_end, 3), clip.text))
        pause = np.zeros(int(rng.uniform(*PAUSE_S) * RATE), np.float32)
        parts += [clip.audio, pause]
        at += (len(clip.audio) + len(pause)) / RATE
        i += 1
    parts.append(np.zeros(int(TAIL_S * RATE), np.float32))
    return Script(np.concatenate(parts).astype(np.float32), tuple(segments))


def build_scripts(clips: list[Clip], count: int, seconds: float, seed: int = 0) -> list[Script]:
    """`count` streams, each with its own order (seed + stream index)."""
    return [build_script(clips, seconds, seed + k) for k in range(count)]
