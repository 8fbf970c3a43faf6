"""Streaming speech segmentation with Silero VAD: endpointing, max length, pre-roll.

A `Segmenter` turns one stream of 16 kHz float32 samples into closed speech segments,
each with stream-absolute sample positions. Rules:
- speech starts when a 32 ms window's probability reaches `threshold`; the segment
  begins `pre_roll_ms` earlier so the first word is never clipped;
- it ends after `endpoint_ms` of windows below `release_threshold`, keeping
  `post_roll_ms` of the trailing silence;
- a segment reaching `max_segment_s` is cut at the quietest window of its second half
  and speech continues in a new segment;
- a segment with less than `min_speech_ms` of speech windows (a click, a cough of
  noise) is dropped: silence and noise alone produce no segment.
Pure and synchronous; not thread-safe (one per stream).

Memory is bounded whatever the input, endless speech included: after every push the
buffer holds only what a later segment or partial can still need — the open segment
(at most `max_segment_s`, cut before it grows longer) from its first sample, or, while
idle, the last `pre_roll_ms` plus one window. Everything before is released after every
final and every max-length cut, so `held_samples` never exceeds
`max_segment_s + pre_roll_ms + 2 windows` (64 ms) between pushes, plus the samples of
one push while it is being processed; the open segment's window probabilities are at most
`max_segment_s` / 32 ms pairs. Partial audio (`open_segment`, `open_span`) costs in
proportion to the open segment, never to the stream.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from edge_server.vad import WINDOW, VadStream

SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class SegmenterConfig:
    threshold: float = 0.5
    release_threshold: float = 0.35
    endpoint_ms: int = 600
    max_segment_s: float = 20.0
    pre_roll_ms: int = 300
    post_roll_ms: int = 200
    min_speech_ms: int = 250

    def __post_init__(self) -> None:
        if not 0 < self.release_threshold <= self.threshold < 1:
            raise ValueError("need 0 < release_threshold <= threshold < 1")
        if self.endpoint_ms < 64 or self.post_roll_ms > self.endpoint_ms:
            raise ValueError("need endpoint_ms >= 64 and post_roll_ms <= endpoint_ms")
        if self.max_segment_s < 2:
            raise ValueError("max_segment_s must be at least 2 seconds")


@dataclass(frozen=True)
class Segment:
    """A closed speech segment: samples [start, end) of the stream."""

    id: int
    start: int
    end: int
    audio: np.ndarray = field(repr=False)

    @property
    def start_s(self) -> float:
        return self.start / SAMPLE_RATE

    @property
    def end_s(self) -> float:
        return self.end / SAMPLE_RATE


class AudioBuffer:
    """Samples [start, end) of a stream held as chunks (no copy per append).

    `drop_before` releases what is no longer needed: whole chunks, and the dropped head
    of the first chunk too once it is `TRIM_MIN` samples or more (the kept tail is
    copied, so the array it came from is freed). So `held` stays within `TRIM_MIN` of
    what was asked to be kept, whatever the chunk sizes. Not thread-safe.
    """

    TRIM_MIN = 512  # a smaller head is kept rather than copying the chunk's tail

    def __init__(self) -> None:
        self.chunks: deque[np.ndarray] = deque()
        self.start = 0
        self.end = 0

    @property
    def held(self) -> int:
        """Samples held (end - start)."""
        return self.end - self.start

    def append(self, samples: np.ndarray) -> None:
        if len(samples):
            self.chunks.append(samples)
            self.end += len(samples)

    def slice(self, a: int, b: int) -> np.ndarray:
        """A copy of samples [a, b) (clamped to what is held).

        Walks only the chunks held, so its cost is bounded by `held`, not by the stream.
        """
        a, b = max(a, self.start), min(b, self.end)
        if b <= a:
            return np.zeros(0, dtype=np.float32)
        out, pos = [], self.start
        for chunk in self.chunks:
            lo, hi = pos, pos + len(chunk)
            if hi > a and lo < b:
                out.append(chunk[max(a - lo, 0) : min(b, hi) - lo])
            pos = hi
            if pos >= b:
                break
        return np.concatenate(out).astype(np.float32, copy=False)

    def drop_before(self, index: int) -> None:
        """Forget every sample before `index` (clamped to what is held)."""
        index = min(index, self.end)
        while self.chunks and self.start + len(self.chunks[0]) <= index:
            self.start += len(self.chunks.popleft())
        if self.chunks and index - self.start >= self.TRIM_MIN:
            self.chunks[0] = self.chunks[0][index - self.start :].copy()
            self.start = index


class Segmenter:
    """One stream's VAD state machine. See the module docstring for the rules."""

    def __init__(self, vad: VadStream | None, config: SegmenterConfig | None = None) -> None:
        self.vad = vad
        self.config = config or SegmenterConfig()
        c = self.config
        ms = SAMPLE_RATE // 1000
        self._pre_roll = c.pre_roll_ms * ms
        self._post_roll = c.post_roll_ms * ms
        self._endpoint_windows = max(1, round(c.endpoint_ms * ms / WINDOW))
        self._min_speech_windows = max(1, round(c.min_speech_ms * ms / WINDOW))
        self._max_len = int(c.max_segment_s * SAMPLE_RATE)
        self.buffer = AudioBuffer()
        self._windows_done = 0  # VAD windows decided so far
        self._next_id = 0
        self._seg_start: int | None = None  # open segment start, or None when idle
        self._seg_probs: list[tuple[int, float]] = []  # (window start, prob) in open segment
        self._speech_windows = 0
        self._silence_run = 0

    @property
    def samples_seen(self) -> int:
        return self.buffer.end

    @property
    def held_samples(self) -> int:
        """Samples this segmenter holds now (see the module docstring for the bound)."""
        return self.buffer.held

    @property
    def in_speech(self) -> bool:
        return self._seg_start is not None

    @property
    def open_segment_id(self) -> int | None:
        return self._next_id if self._seg_start is not None else None

    def open_span(self) -> tuple[int, int, int] | None:
        """(id, start, end) of the segment still open, without copying its audio."""
        if self._seg_start is None:
            return None
        return self._next_id, self._seg_start, self.buffer.end

    def open_probs(self) -> list[tuple[int, float]]:
        """(window start, speech probability) of the open segment's VAD windows, oldest
        first ([] while idle). The segmenter's own list: read it, never keep or change it."""
        return self._seg_probs

    def open_segment(self) -> tuple[int, int, np.ndarray] | None:
        """(id, start, audio so far) of the segment still open, for partial decoding.

        Copies the open segment only (at most `max_segment_s` plus one push)."""
        if self._seg_start is None:
            return None
        return self._next_id, self._seg_start, self.buffer.slice(self._seg_start, self.buffer.end)

    def feed(self, samples: np.ndarray) -> list[Segment]:
        """Add samples, running this segmenter's own VAD; return the segments this closed."""
        assert self.vad is not None, "a Segmenter without a VadStream takes push()"
        samples = np.asarray(samples, dtype=np.float32)
        return self.push(samples, self.vad.feed(samples))

    def push(self, samples: np.ndarray, probs: np.ndarray) -> list[Segment]:
        """Add samples with the VAD probabilities of the windows they completed.

        For callers that run the VAD elsewhere (the server batches it across sessions):
        `probs` must be what a VadStream fed the same samples would return.
        """
        samples = np.asarray(samples, dtype=np.float32)
        self.buffer.append(samples)
        closed: list[Segment] = []
        for prob in probs:
            w0 = self._windows_done * WINDOW
            self._windows_done += 1
            self._step(w0, float(prob), closed)
        self._release()
        return closed

    def flush(self) -> list[Segment]:
        """End of stream: close the open segment (if it holds enough speech)."""
        closed: list[Segment] = []
        if self._seg_start is not None:
            self._close(self.buffer.end, closed)
        self._release()
        return closed

    def _release(self) -> None:
        """Drop the samples no segment can need any more: everything before the open
        segment, or, while idle, before the pre-roll a segment opening next may take."""
        if self._seg_start is not None:
            self.buffer.drop_before(self._seg_start)
        else:
            self.buffer.drop_before(self.buffer.end - self._pre_roll - WINDOW)

    def _step(self, w0: int, prob: float, closed: list[Segment]) -> None:
        c = self.config
        if self._seg_start is None:
            if prob >= c.threshold:
                self._seg_start = max(self.buffer.start, w0 - self._pre_roll, 0)
                self._seg_probs = [(w0, prob)]
                self._speech_windows, self._silence_run = 1, 0
            return
        self._seg_probs.append((w0, prob))
        if prob >= c.release_threshold:
            self._silence_run = 0
            self._speech_windows += prob >= c.threshold
        else:
            self._silence_run += 1
        w1 = w0 + WINDOW
        if self._silence_run >= self._endpoint_windows:
            silence_start = w1 - self._silence_run * WINDOW
            self._close(silence_start + self._post_roll, closed)
        elif w1 - self._seg_start >= self._max_len:
            self._cut_at_quietest(closed)

    def _close(self, end: int, closed: list[Segment]) -> None:
        assert self._seg_start is not None
        if self._speech_windows >= self._min_speech_windows:
            audio = self.buffer.slice(self._seg_start, end)
            closed.append(Segment(self._next_id, self._seg_start, end, audio))
            self._next_id += 1
        self._seg_start = None
        self._seg_probs = []

    def _cut_at_quietest(self, closed: list[Segment]) -> None:
        assert self._seg_start is not None
        half = self._seg_start + self._max_len // 2
        candidates = [(p, -w) for w, p in self._seg_probs if w >= half]
        _, neg_w = min(candidates)  # lowest probability; latest on ties
        cut = -neg_w + WINDOW // 2
        tail = [(w, p) for w, p in self._seg_probs if w >= -neg_w]
        self._close(cut, closed)
        self._seg_start = cut
        self._seg_probs = tail
        self._speech_windows = sum(p >= self.config.threshold for _, p in tail)
        self._silence_run = 0
