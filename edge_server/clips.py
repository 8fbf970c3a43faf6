"""Whole-clip transcription (uploaded files, Wyoming utterances) on the shared scheduler.

`ClipTranscriber.transcribe(blocks)` segments a clip with the server's batched VAD and
decodes its segments as `clip` requests, batched with everything else the server runs
(clips fill what live streams leave of each batch). The segmentation matches
`earshot transcribe`: a clip up to `whole_clip_s` seconds is decoded whole when any
window is speech; a longer one is split by the streaming `Segmenter`, and its segments
are submitted as they close, so decoding overlaps reading.

`blocks` is an async iterable of 16 kHz mono float32 arrays (e.g. an `UploadDecoder`), or
a sync iterable (e.g. `read_audio_blocks`), which is advanced in a worker thread since
reading a file blocks.

Memory per clip is bounded whatever its length: the next block is read only while the
clip's submitted, unfinished segments hold at most `max_inflight_s` seconds of audio
(default twice the scheduler's per-batch clip budget: 120 s, 7.7 MB), so a clip is read
as fast as the workers transcribe it, not faster. Add the open segment (at most
`max_segment_s`) and, for the first `whole_clip_s`, the clip's head. A segment that fails
fails the clip at once.

At most `max_jobs` clips run at once: `reserve()` takes a slot (`ClipsBusy` beyond that),
for callers that must refuse work before they receive it (an upload's body); `transcribe`
takes one itself when given none. Cancelling the awaiting task (an HTTP client that went
away) withdraws the clip's queued segments. Runs on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from edge_server.audio import SAMPLE_RATE
from edge_server.formats import TimedText, Transcript
from edge_server.scheduler import DecodeRequest, Scheduler
from edge_server.segmenter import Segment, Segmenter, SegmenterConfig
from edge_server.vad_service import VadService

WHOLE_CLIP_S = 20.0

Blocks = AsyncIterable[np.ndarray] | Iterable[np.ndarray]


class ClipError(RuntimeError):
    """A clip could not be decoded (a worker failed on it twice, or it was rejected)."""


class ClipsBusy(RuntimeError):
    """Too many clips are being transcribed already; retry later."""


class ClipSlot:
    """One of the `max_jobs` places; `release()` (or leaving the `with`) gives it back."""

    def __init__(self, owner: ClipTranscriber) -> None:
        self._owner: ClipTranscriber | None = owner

    def release(self) -> None:
        if self._owner is not None:
            self._owner.active -= 1
            self._owner = None

    def __enter__(self) -> ClipSlot:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class ClipTranscriber:
    def __init__(self, scheduler: Scheduler, vad: VadService, config: SegmenterConfig,
                 max_jobs: int = 8, whole_clip_s: float = WHOLE_CLIP_S,
                 max_inflight_s: float | None = None) -> None:
        self.scheduler = scheduler
        self.vad = vad
        self.config = config
        self.max_jobs = max_jobs
        self.whole_clip_s = whole_clip_s
        self.max_inflight_s = max_inflight_s if max_inflight_s is not None else max(
            2 * scheduler.clip_budget, 2 * config.max_segment_s)
        self.active = 0
        self.done = 0
        self.audio_seconds = 0.0
        self._ids = itertools.count(1)
        self._reader = ThreadPoolExecutor(4, "clip-reader")

    def reserve(self) -> ClipSlot:
        """A clip slot, or ClipsBusy when `max_jobs` clips hold one."""
        if self.active >= self.max_jobs:
            raise ClipsBusy(f"max_clip_jobs ({self.max_jobs}) clips are being transcribed "
                            "already")
        self.active += 1
        return ClipSlot(self)

    async def transcribe(self, blocks: Blocks, source: str = "",
                         slot: ClipSlot | None = None, model: str | None = None) -> Transcript:
        """The clip's transcript; raises ClipsBusy, ClipError or the reader's exception.

        With `slot` (from `reserve()`) the caller keeps owning it; without, one is taken
        and given back here. `model`: the served model to decode with (None: the default).
        """
        own = self.reserve() if slot is None else None
        try:
            return await self._transcribe(blocks, source, model)
        finally:
            if own is not None:
                own.release()

    async def _transcribe(self, blocks: Blocks, source: str,
                          model: str | None = None) -> Transcript:
        job = _Job(f"clip-{next(self._ids)}", model)
        try:
            async with contextlib.aclosing(self._iterate(blocks)) as stream:
                duration = await self._segment_and_submit(job, stream)
            texts = await asyncio.gather(*(f for _, _, f in job.pending))
        except BaseException:
            self.scheduler.drop_session(job.id)
            for _, _, fut in job.pending:
                fut.cancel()
            raise
        self.done += 1
        self.audio_seconds += duration
        segments = [TimedText(a, b, t) for (a, b, _), t in zip(job.pending, texts, strict=True)]
        return Transcript(source, segments, duration)

    async def _iterate(self, blocks: Blocks) -> AsyncIterator[np.ndarray]:
        if isinstance(blocks, AsyncIterable):
            async for block in blocks:
                yield block
            return
        loop = asyncio.get_running_loop()
        iterator = iter(blocks)
        while (block := await loop.run_in_executor(self._reader, next, iterator, None)) \
                is not None:
            yield block

    async def _segment_and_submit(self, job: _Job, blocks: AsyncIterator[np.ndarray]) -> float:
        stream = self.vad.stream()
        segmenter = Segmenter(None, self.config)
        head: list[np.ndarray] | None = []  # the clip while it may still be decoded whole
        seen = 0
        peak = 0.0
        held: list[Segment] = []
        async for block in blocks:
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
                        self._submit(job, seg.start_s, seg.end_s, seg.audio)
                    held = []
                    await job.wait_for_room(self.max_inflight_s)
            else:
                for seg in closed:
                    self._submit(job, seg.start_s, seg.end_s, seg.audio)
                await job.wait_for_room(self.max_inflight_s)
        if head is not None:
            if head and peak >= self.config.threshold:
                audio = np.concatenate(head)
                self._submit(job, 0.0, len(audio) / SAMPLE_RATE, audio)
        else:
            for seg in segmenter.flush():
                self._submit(job, seg.start_s, seg.end_s, seg.audio)
        return seen / SAMPLE_RATE

    def _submit(self, job: _Job, start: float, end: float, audio: np.ndarray) -> None:
        future = asyncio.get_running_loop().create_future()
        self.scheduler.submit(DecodeRequest(
            job.id, len(job.pending), "clip", audio, int(start * SAMPLE_RATE),
            int(end * SAMPLE_RATE), future=future, model=job.model))
        job.pending.append((start, end, future))
        job.inflight.append((end - start, future))

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


class _Job:
    """One clip's segments: all of them (`pending`, in order) and the unfinished ones."""

    def __init__(self, job_id: str, model: str | None = None) -> None:
        self.id = job_id
        self.model = model
        self.pending: list[tuple[float, float, asyncio.Future]] = []
        self.inflight: list[tuple[float, asyncio.Future]] = []

    async def wait_for_room(self, max_seconds: float) -> None:
        """Until the unfinished segments hold at most `max_seconds` of audio.

        Raises the first failed segment's error at once (no point reading further).
        """
        while True:
            for _, fut in self.inflight:
                if fut.done() and not fut.cancelled() and fut.exception() is not None:
                    raise fut.exception()
            self.inflight = [(s, f) for s, f in self.inflight if not f.done()]
            if sum(s for s, _ in self.inflight) <= max_seconds:
                return
            await asyncio.wait([f for _, f in self.inflight],
                               return_when=asyncio.FIRST_COMPLETED)
