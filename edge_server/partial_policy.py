"""What partials cost, and when they are shed: the partial planner and the shedding gate.

`PartialPlanner` (one per streaming session) decides when a partial is decoded and which
audio it decodes, so that a live dictation costs little whatever the segment's length:
- cadence in stream time: at most one partial per `interval_ms` of new audio;
- only when new speech arrived since the previous partial: a VAD window of the new audio
  at or above the speech threshold (silence inside a segment, e.g. the endpoint wait,
  decodes nothing: the text would be the same);
- a bounded window: the open segment is split, as it grows, into *chunks* at pauses; a
  chunk is decoded once and its text is kept ("committed"); every other partial decodes
  only the tail after the last chunk. A chunk is cut once the uncommitted tail reaches
  `chunk_s`, at the quietest VAD window between `min_chunk_s` into the tail and `edge_ms`
  before its end, if that window is a pause (probability below `pause_threshold`); speech
  without such a pause is cut at its quietest window anyway once the tail reaches
  `max_chunk_s`. The text sent is the committed chunks' text followed by the tail's, so
  a partial decodes at most about `chunk_s` (`max_chunk_s` in speech without pauses) plus
  one interval of audio, not the whole segment (whose cost grows with its length, and with
  it the cost of the partials of a long sentence quadratically);
- a tail shorter than `min_tail_ms` is not decoded on its own (too little to say).
The final of a segment is always decoded from the whole segment (never from chunks), so
partials never change a final's text; a partial's text may differ from it (chunk edges).

`StablePrefix` (one per session) makes a partial cheaper to decode: the tokens the last
`agree` partials of the same audio window (same segment, same chunk start) agree on, their
longest common prefix, are given as a draft prefix to the next partial's decode (one
prefill call instead of one decoder step per token; the engine verifies the draft, so the
text is unchanged: docs/engine.md). The server uses agree = 1 (the previous partial):
forcing an unverified LocalAgreement-2 prefix was measured and dropped (docs/benchmarks.md).
It is reset by a new window (new segment, or a chunk committed) and at every final. Chunk
jobs (`commit`) get no prefix: their audio ends at a pause, possibly before words the
previous partials agreed on (which, forced, would be committed twice). Finals and clips
never get one.

`ShedGate` is load shedding with hysteresis: on when the measured lateness exceeds
`on_above_s`, off only once it has stayed below `off_below_s` for `hold_s` (measured on
the injected clock). So a server hovering around the threshold changes state at most once
per `hold_s` instead of on every evaluation.

Both are pure state machines with no I/O; event loop only, not thread-safe.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from edge_server.segmenter import SAMPLE_RATE
from edge_server.vad import WINDOW


@dataclass(frozen=True)
class PartialConfig:
    """Partial planning settings (see the module docstring). Raises ValueError when
    inconsistent: interval_ms >= 50, 0 < min_chunk_s < chunk_s <= max_chunk_s,
    0 <= edge_ms, and min_chunk_s + edge_ms fits in chunk_s."""

    interval_ms: int = 400
    chunk_s: float = 8.0
    min_chunk_s: float = 4.0
    max_chunk_s: float = 12.0
    pause_threshold: float = 0.35
    edge_ms: int = 100
    min_tail_ms: int = 300
    speech_threshold: float = 0.5
    need_speech: bool = True

    def __post_init__(self) -> None:
        if self.interval_ms < 50:
            raise ValueError("partial_interval_ms must be at least 50")
        if not 0 < self.min_chunk_s < self.chunk_s <= self.max_chunk_s:
            raise ValueError("need 0 < partial_min_chunk_s < partial_chunk_s <= "
                             "partial_max_chunk_s")
        if self.edge_ms < 0 or self.min_tail_ms < 0:
            raise ValueError("partial_edge_ms and partial_min_tail_ms must be >= 0")
        if self.min_chunk_s + self.edge_ms / 1000 >= self.chunk_s:
            raise ValueError("partial_min_chunk_s + partial_edge_ms must be below "
                             "partial_chunk_s")


@dataclass(frozen=True)
class PartialJob:
    """One partial decode: samples [start, end) of segment `segment_id` (which begins at
    `segment_start`); `commit`: this is a chunk whose text is kept for later partials."""

    segment_id: int
    segment_start: int
    start: int
    end: int
    commit: bool


def partial_config(settings: Any) -> PartialConfig:
    """The PartialConfig of a ServerSettings (duck-typed: config.py imports this module)."""
    return PartialConfig(
        interval_ms=settings.partial_interval_ms, chunk_s=settings.partial_chunk_s,
        min_chunk_s=settings.partial_min_chunk_s, max_chunk_s=settings.partial_max_chunk_s,
        min_tail_ms=settings.partial_min_tail_ms,
        speech_threshold=settings.segmenter.threshold,
        pause_threshold=settings.segmenter.release_threshold,
        need_speech=settings.partial_need_speech)


def check_partial_settings(settings: Any) -> None:
    """Raise ValueError when a ServerSettings' partial or shedding settings are
    inconsistent (called when settings are loaded, so a bad config fails at start)."""
    partial_config(settings)
    ShedGate(settings.degrade_after_s, settings.degrade_recover_s, settings.degrade_hold_s)


class PartialPlanner:
    """Per-session partial state. `plan()` when audio arrived; `done()` with the result of
    the job it returned (every job gets exactly one `done()`, text None if it was dropped).
    One job at a time is assumed (the session keeps at most one partial in flight)."""

    def __init__(self, config: PartialConfig) -> None:
        self.config = config
        self._step = config.interval_ms * SAMPLE_RATE // 1000
        self._chunk = int(config.chunk_s * SAMPLE_RATE)
        self._max_chunk = int(config.max_chunk_s * SAMPLE_RATE)
        self._min_chunk = int(config.min_chunk_s * SAMPLE_RATE)
        self._edge = config.edge_ms * SAMPLE_RATE // 1000
        self._min_tail = config.min_tail_ms * SAMPLE_RATE // 1000
        self._segment = -1
        self._committed: list[str] = []  # texts of the segment's decoded chunks, in order
        self._tail_start = 0  # first sample after the last committed chunk
        self._last_end: int | None = None  # end of the audio the last job covered
        self.skipped_silence = 0  # counters, for tests and debugging
        self.jobs = 0

    def plan(self, segment_id: int, segment_start: int, end: int,
             probs: Sequence[tuple[int, float]]) -> PartialJob | None:
        """The partial to decode now for the open segment [segment_start, end), or None.

        `probs`: (window start, speech probability) of the segment's VAD windows so far,
        oldest first (Segmenter.open_probs)."""
        c = self.config
        if segment_id != self._segment:
            self._segment = segment_id
            self._committed = []
            self._tail_start = segment_start
            self._last_end = None
        if self._last_end is not None:
            if end - self._last_end < self._step:
                return None
            if c.need_speech and not _speech_after(probs, self._last_end, c.speech_threshold):
                self.skipped_silence += 1
                self._last_end = end  # this silence is decided: count the cadence from here
                return None
        tail = end - self._tail_start
        if tail < self._min_tail:
            return None
        stop, commit = end, False
        if tail >= self._chunk:
            cut, prob = _quietest(probs, self._tail_start + self._min_chunk, end - self._edge)
            if cut is not None and (prob < c.pause_threshold or tail >= self._max_chunk):
                stop, commit = cut, True
            elif tail >= self._max_chunk:  # no VAD window there (cannot happen in a session)
                stop, commit = end - self._edge, True
        self._last_end = end
        self.jobs += 1
        return PartialJob(segment_id, segment_start, self._tail_start, stop, commit)

    def done(self, job: PartialJob, text: str | None) -> str | None:
        """Record a job's result; return the partial text to show (None: nothing new).

        A dropped job (text None) changes nothing: its audio is planned again later."""
        if text is None or job.segment_id != self._segment or job.start != self._tail_start:
            return None
        text = text.strip()
        if job.commit:
            if text:
                self._committed.append(text)
            self._tail_start = job.end
        parts = self._committed if job.commit else [*self._committed, text]
        return " ".join(p for p in parts if p) or None


class StablePrefix:
    """LocalAgreement-n over the token ids of one session's partials (module docstring):
    the prefix is the longest common prefix of the window's last `agree` partials (2: as
    whisper_streaming; 1: the previous partial's tokens, for an engine that verifies its
    prefix). `prefix(job)` before a job is sent; `record(job, tokens)` with its decoded
    tokens; `reset()` at a final. ValueError for agree < 1."""

    def __init__(self, agree: int = 1) -> None:
        if agree < 1:
            raise ValueError("agree must be at least 1")
        self.agree = agree
        self._window: tuple[int, int] | None = None  # (segment id, chunk start)
        self._last: list[tuple[int, ...]] = []  # the window's last `agree` partials' tokens

    def prefix(self, job: PartialJob) -> tuple[int, ...]:
        """Tokens to give at the start of `job`'s decode (empty: none)."""
        if (job.commit or self._window != (job.segment_id, job.start)
                or len(self._last) < self.agree):
            return ()
        agreed = self._last[0]
        for tokens in self._last[1:]:
            agreed = common_prefix(agreed, tokens)
        return agreed

    def record(self, job: PartialJob, tokens: Sequence[int] | None) -> None:
        """A decoded partial's tokens (None: dropped or failed, nothing learnt). A commit
        job's audio window is over: the next job starts a new one."""
        if tokens is None:
            return
        if job.commit:
            self.reset()
            return
        window = (job.segment_id, job.start)
        if window != self._window:
            self._window, self._last = window, []
        self._last = [*self._last, tuple(tokens)][-self.agree:]

    def reset(self) -> None:
        self._window, self._last = None, []


def common_prefix(a: Sequence[int], b: Sequence[int]) -> tuple[int, ...]:
    """The longest common prefix of two token sequences."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return tuple(a[:n])


def _speech_after(probs: Sequence[tuple[int, float]], after: int, threshold: float) -> bool:
    """Whether a VAD window ending after sample `after` reached `threshold`."""
    for w0, p in reversed(probs):
        if w0 + WINDOW <= after:
            return False
        if p >= threshold:
            return True
    return False


def _quietest(probs: Sequence[tuple[int, float]], lo: int,
              hi: int) -> tuple[int | None, float]:
    """(middle, probability) of the lowest-probability VAD window starting in [lo, hi)
    (the latest on ties); (None, 1.0) when there is none."""
    best: tuple[float, int] | None = None
    for w0, p in probs:
        if lo <= w0 < hi and (best is None or p <= best[0]):
            best = (p, w0)
    return (None, 1.0) if best is None else (best[1] + WINDOW // 2, best[0])


class ShedGate:
    """Hysteresis for load shedding. `update(lateness)` returns whether to shed now:
    turns on when lateness > `on_above_s`; turns off only after lateness stayed below
    `off_below_s` for `hold_s` (on `clock`). `changes` counts state changes.
    Needs 0 <= off_below_s <= on_above_s and hold_s >= 0 (ValueError otherwise);
    `off_below_s == on_above_s` with `hold_s == 0` is plain thresholding."""

    def __init__(self, on_above_s: float, off_below_s: float | None = None,
                 hold_s: float = 0.0, clock: Callable[[], float] = time.monotonic) -> None:
        off = on_above_s if off_below_s is None else off_below_s
        if not 0 <= off <= on_above_s or hold_s < 0:
            raise ValueError("need 0 <= degrade_recover_s <= degrade_after_s and "
                             "degrade_hold_s >= 0")
        self.on_above = on_above_s
        self.off_below = off
        self.hold = hold_s
        self.clock = clock
        self.active = False
        self.changes = 0
        self._calm_since: float | None = None

    def update(self, lateness_s: float) -> bool:
        if not self.active:
            if lateness_s > self.on_above:
                self.active = True
                self.changes += 1
                self._calm_since = None
            return self.active
        calm = (lateness_s < self.off_below if self.off_below < self.on_above
                else lateness_s <= self.on_above)
        if not calm:
            self._calm_since = None
            return True
        now = self.clock()
        if self._calm_since is None:
            self._calm_since = now
        if now - self._calm_since >= self.hold:
            self.active = False
            self.changes += 1
            self._calm_since = None
        return self.active
