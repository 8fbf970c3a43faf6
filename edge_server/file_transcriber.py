"""Transcribe audio files with an engine: VAD splitting, batching across files and segments.

Files up to `split_above_s` seconds are decoded whole (one segment covering the file)
unless the VAD finds no speech at all, in which case they give no text. Longer files
are streamed block by block through the `Segmenter`, so memory stays bounded (a few
batches of <= 20 s segments) however long the file. Pending segments from all files
are decoded together in batches of up to `batch_size`: by default only the segments of
one file, so a file's text never depends on which other files came with it (Moonshine's
int8 decoder quantizes activations per batch, see docs/engine.md); `across_files=True`
also batches across files, for throughput.
Blocking and single-threaded: call it from a CLI or a worker, never an event loop.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_server.audio import SAMPLE_RATE, AudioError, audio_duration, read_audio_blocks
from edge_server.engine import AsrEngine
from edge_server.formats import TimedText, Transcript
from edge_server.segmenter import Segmenter, SegmenterConfig
from edge_server.vad import SileroVad


@dataclass
class FileResult:
    """A finished file: its transcript, or the error that stopped it."""

    path: Path
    transcript: Transcript | None = None
    error: str | None = None
    decode_seconds: float = 0.0  # engine time spent on this file's segments


@dataclass
class _Job:
    result: FileResult
    start: float
    end: float
    audio: np.ndarray


@dataclass
class _Open:
    result: FileResult
    jobs_left: int = 0
    reading_done: bool = False
    slots: list[TimedText | None] = field(default_factory=list)


class FileTranscriber:
    """Owns an engine and a VAD; not thread-safe."""

    def __init__(
        self,
        engine: AsrEngine,
        vad: SileroVad | None = None,
        batch_size: int = 16,
        split_above_s: float = 20.0,
        segmenter_config: SegmenterConfig | None = None,
        across_files: bool = False,
    ) -> None:
        self.across_files = across_files
        self.engine = engine
        self.vad = vad or SileroVad()
        self.batch_size = batch_size
        self.split_above_s = split_above_s
        self.segmenter_config = segmenter_config or SegmenterConfig(max_segment_s=split_above_s)

    def transcribe_files(self, paths: Iterable[Path]) -> Iterator[FileResult]:
        """Yield one FileResult per path, in input order."""
        queue: list[tuple[_Open, int, _Job]] = []
        order: list[_Open] = []
        for path in paths:
            entry = _Open(FileResult(Path(path)))
            order.append(entry)
            try:
                for job in self._jobs(entry.result):
                    entry.slots.append(None)
                    entry.jobs_left += 1
                    queue.append((entry, len(entry.slots) - 1, job))
                    if len(queue) >= self.batch_size:
                        self._decode(queue)
                        queue = []
            except AudioError as exc:
                entry.result.error = str(exc)
                queue = [q for q in queue if q[0] is not entry]
                entry.jobs_left = 0
            entry.reading_done = True
            if queue and not self.across_files:
                self._decode(queue)
                queue = []
            while order and order[0].reading_done and order[0].jobs_left == 0:
                yield self._finish(order.pop(0))
        if queue:
            self._decode(queue)
        while order:
            yield self._finish(order.pop(0))

    def _jobs(self, result: FileResult) -> Iterator[_Job]:
        duration = audio_duration(result.path)
        result.transcript = Transcript(str(result.path), duration=duration)
        if duration <= self.split_above_s:
            blocks = list(read_audio_blocks(result.path))
            audio = np.concatenate(blocks) if blocks else np.zeros(0, np.float32)
            if self.has_speech(audio):
                yield _Job(result, 0.0, len(audio) / SAMPLE_RATE, audio)
            return
        segmenter = Segmenter(self.vad.stream(), self.segmenter_config)
        for block in read_audio_blocks(result.path, block_seconds=5.0):
            for seg in segmenter.feed(block):
                yield _Job(result, seg.start_s, seg.end_s, seg.audio)
        for seg in segmenter.flush():
            yield _Job(result, seg.start_s, seg.end_s, seg.audio)

    def has_speech(self, audio: np.ndarray) -> bool:
        """True if any 32 ms window of `audio` reaches the VAD speech threshold."""
        if not len(audio):
            return False
        padded = np.pad(audio, (0, -len(audio) % 512))
        probs = self.vad.stream().feed(padded)
        return bool(len(probs)) and float(probs.max()) >= self.segmenter_config.threshold

    def _decode(self, queue: list[tuple[_Open, int, _Job]]) -> None:
        started = time.perf_counter()
        texts = self.engine.transcribe_batch([job.audio for _, _, job in queue])
        share = (time.perf_counter() - started) / len(queue)
        for (entry, slot, job), text in zip(queue, texts, strict=True):
            entry.slots[slot] = TimedText(job.start, job.end, text)
            entry.jobs_left -= 1
            entry.result.decode_seconds += share

    @staticmethod
    def _finish(entry: _Open) -> FileResult:
        result = entry.result
        if result.error is None and result.transcript is not None:
            result.transcript.segments = [s for s in entry.slots if s is not None]
        else:
            result.transcript = None
        return result
