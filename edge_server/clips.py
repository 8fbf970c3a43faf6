"""Whole-clip transcription (uploaded files, Wyoming utterances) on the shared scheduler.

`ClipTranscriber.transcribe(blocks)` segments a clip with the server's batched VAD and
decodes its segments as `clip` requests, batched with everything else the server runs
(clips fill what live streams leave of each batch). The segmentation matches
`earshot transcribe`: a clip up to `whole_clip_s` seconds is decoded whole when any
window is speech; a longer one is split by the streaming `Segmenter`, and its segments
are submitted as they close, so decoding overlaps reading.
`blocks` is a sync iterator of 16 kHz mono float32 arrays (e.g. `read_audio_blocks`);
it is advanced in a worker thread, since decoding a file blocks. Runs on the event loop.
At most `max_jobs` clips run at once: `ClipsBusy` beyond that. Cancelling the awaiting
task (an HTTP client that went away) withdraws the clip's queued segments.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from edge_server.audio import SAMPLE_RATE
from edge_server.formats import TimedText, Transcript
from edge_server.scheduler import DecodeRequest, Scheduler
from edge_server.segmenter import Segment, Segmenter, SegmenterConfig
from edge_server.vad_service import VadService

WHOLE_CLIP_S = 20.0


class ClipError(RuntimeError):
    """A clip could not be decoded (a worker failed on it twice, or it was rejected)."""


class ClipsBusy(RuntimeError):
    """Too many clips are being transcribed already; retry later."""


class ClipTranscriber:
    def __init__(self, scheduler: Scheduler, vad: VadService, config: SegmenterConfig,
                 max_jobs: int = 8, whole_clip_s: float = WHOLE_CLIP_S) -> None:
        self.scheduler = scheduler
        self.vad = vad
        self.config = config
        self.max_jobs = max_jobs
        self.whole_clip_s = whole_clip_s
        self.active = 0
        self.done = 0
        self.audio_seconds = 0.0
        self._ids = itertools.count(1)
        self._reader = ThreadPoolExecutor(4, "clip-reader")

    async def transcribe(self, blocks: Iterator[np.ndarray], source: str = "") -> Transcript:
        """The clip's transcript; raises ClipsBusy, ClipError or the reader's exception."""
        if self.active >= self.max_jobs:
            raise ClipsBusy(f"{self.max_jobs} clips are being transcribed already")
        self.active += 1
        job_id = f"clip-{next(self._ids)}"
        pending: list[tuple[float, float, asyncio.Future]] = []
        try:
            duration = await self._segment_and_submit(job_id, blocks, pending)
            texts = await asyncio.gather(*(f for _, _, f in pending))
        except BaseException:
            self.scheduler.drop_session(job_id)
            for _, _, fut in pending:
                fut.cancel()
            raise
        finally:
            self.active -= 1
        self.done += 1
        self.audio_seconds += duration
        segments = [TimedText(a, b, t) for (a, b, _), t in zip(pending, texts, strict=True)]
        return Transcript(source, segments, duration)

    async def _segment_and_submit(self, job_id: str, blocks: Iterator[np.ndarray],
                                  pending: list) -> float:
        loop = asyncio.get_running_loop()
        stream = self.vad.stream()
        segmenter = Segmenter(None, self.config)
        head: list[np.ndarray] | None = []  # the clip while it may still be decoded whole
        seen = 0
        peak = 0.0
        held: list[Segment] = []
        while (block := await loop.run_in_executor(self._reader, next, blocks, None)) is not None:
            seen += len(block)
            probs = await self.vad.probs(stream, block)
            if len(probs):
                peak = max(peak, float(probs.max()))
            closed = segmenter.push(block, probs)
            if head is not None:
                head.append(block)
                held.extend(closed)
                if seen > self.whole_clip_s * SAMPLE_RATE:
                    head = None  # too long to decode whole: segments from now on
                    for seg in held:
                        self._submit(job_id, seg.start_s, seg.end_s, seg.audio, pending)
            else:
                for seg in closed:
                    self._submit(job_id, seg.start_s, seg.end_s, seg.audio, pending)
        if head is not None:
            if head and peak >= self.config.threshold:
                audio = np.concatenate(head)
                self._submit(job_id, 0.0, len(audio) / SAMPLE_RATE, audio, pending)
        else:
            for seg in segmenter.flush():
                self._submit(job_id, seg.start_s, seg.end_s, seg.audio, pending)
        return seen / SAMPLE_RATE

    def _submit(self, job_id: str, start: float, end: float, audio: np.ndarray,
                pending: list) -> None:
        future = asyncio.get_running_loop().create_future()
        self.scheduler.submit(DecodeRequest(
            job_id, len(pending), "clip", audio, int(start * SAMPLE_RATE),
            int(end * SAMPLE_RATE), future=future))
        pending.append((start, end, future))

    @staticmethod
    def resolve(req: DecodeRequest, text: str | None, error: str | None) -> None:
        """The scheduler's result for a clip request (called by the server's dispatcher)."""
        if req.future is None or req.future.done():
            return
        if error is not None:
            req.future.set_exception(ClipError(error))
        else:
            req.future.set_result(text or "")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._reader.shutdown(wait=False, cancel_futures=True)
