"""Streaming sessions: the per-dictation state that outlives any one connection.

A `Session` turns numbered PCM16 frames into segments (VAD), sends them to the scheduler
as final and partial decode requests, and emits `final` messages exactly once and in
segment order, then `ended` after the last one. It keeps every final it sent, so a client
that reconnects (resume) gets what it missed; frames already received are dropped by
sequence number. `SessionRegistry` maps session ids to sessions (the dispatcher: one
lookup per result) and expires sessions whose client stayed away past the grace period.
Everything here runs on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Protocol

import numpy as np
import soxr

from edge_server.audio import pcm16_to_float
from edge_server.config import ServerSettings
from edge_server.partial_policy import PartialJob, PartialPlanner, StablePrefix, partial_config
from edge_server.protocol import ErrorCode, ProtocolError, error_message
from edge_server.scheduler import DecodeRequest, Scheduler
from edge_server.segmenter import SAMPLE_RATE, Segment, Segmenter
from edge_server.vad_service import VadService

log = logging.getLogger(__name__)

PREFIX_AGREE = 1  # partials a draft prefix must agree over (docs/benchmarks.md, "Partials")


class Connection(Protocol):
    """What a session needs from its transport (see ws_handler.WsConnection)."""

    def send(self, message: dict) -> None: ...
    def close(self, code: int, reason: str = "") -> None: ...


class Session:
    def __init__(self, session_id: str, token: str | None, sample_rate: int, partials: bool,
                 settings: ServerSettings, vad: VadService, scheduler: Scheduler,
                 on_ended: Callable[[Session], None], model: str | None = None) -> None:
        """`model`: the catalog id this session's audio is decoded with (None: the
        server's default); bound in the scheduler, so every request of the session uses it."""
        self.id = session_id
        self.model = model
        scheduler.bind_model(session_id, model)
        self.token = token
        self.sample_rate = sample_rate
        self.partials = partials
        self.settings = settings
        self.vad = vad
        self.scheduler = scheduler
        self._on_ended = on_ended
        self.resampler = None if sample_rate == SAMPLE_RATE else soxr.ResampleStream(
            sample_rate, SAMPLE_RATE, 1, dtype="float32")
        self.vad_stream = vad.stream()
        self.segmenter = Segmenter(None, settings.segmenter)
        self.conn: Connection | None = None
        self.next_seq = 0
        self.finals: list[dict] = []  # sent finals, in segment order (re-sent on resume)
        self._ready: dict[int, dict] = {}  # decoded finals waiting for earlier segments
        self.segments_submitted = 0
        self.pending_finals = 0
        self.partial_in_flight = False  # one partial at a time; every one is answered
        self._partial_failed_segment = -1  # a segment whose partial failed to decode
        self._partial_plan = PartialPlanner(partial_config(settings))  # _maybe_partial
        self._partial_job: tuple[DecodeRequest, PartialJob] | None = None  # in flight
        # the previous partial's tokens, a draft the engine keeps as far as it agrees with
        # (verify): fewer decoder steps, the same text (partial_policy.StablePrefix)
        self._stable = StablePrefix(agree=PREFIX_AGREE)
        self._told_degraded = False
        self.ending = False
        self.server_ended = False  # the turn was ended by the server (drain), not the client
        self.ended = False
        self.started = time.monotonic()
        self.expires_at: float | None = None
        self.audio_received_s = 0.0
        self._finals_drained = asyncio.Event()
        self._finals_drained.set()
        self.lock = asyncio.Lock()

    # ---- connection --------------------------------------------------------------------
    def attach(self, conn: Connection, last_final: int) -> None:
        """Bind a (new) connection; re-send finals after `last_final`, and `ended` if due."""
        if self.conn is not None and self.conn is not conn:
            self.conn.send(error_message(ErrorCode.SESSION_REPLACED,
                                         "this session continued on a newer connection"))
            self.conn.close(4410, "session replaced")
        self.conn = conn
        self.expires_at = None
        for msg in self.finals:
            if msg["segment"] > last_final:
                conn.send(msg)
        if self._told_degraded:
            conn.send({"type": "status", "state": "degraded",
                       "message": "server is behind: partials paused, finals continue"})
        if self.ended:
            conn.send(self._ended_message())
            conn.close(1000, "ended")

    def detach(self, conn: Connection) -> None:
        if self.conn is conn:
            self.conn = None
            self.expires_at = time.monotonic() + self.settings.resume_grace_s

    def _send(self, msg: dict) -> None:
        if self.conn is not None:
            self.conn.send(msg)

    # ---- audio in ----------------------------------------------------------------------
    async def ingest(self, seq: int, pcm16: bytes) -> bool:
        """Take one frame. Returns False for a frame not taken: a duplicate (already
        received), or any frame after the server itself ended the turn (drain)."""
        if self.server_ended or seq < self.next_seq:
            return False
        if seq > self.next_seq:
            raise ProtocolError(ErrorCode.SEQUENCE_GAP,
                                f"frame {seq} arrived but {self.next_seq} was expected")
        if self.ending:
            raise ProtocolError(ErrorCode.BAD_FRAME, "audio after 'end'")
        samples = pcm16_to_float(pcm16)
        self.audio_received_s += len(samples) / self.sample_rate
        limit = self.settings.max_realtime_factor * (time.monotonic() - self.started) + 30.0
        if self.audio_received_s > limit:
            raise ProtocolError(ErrorCode.RATE_LIMITED,
                                f"audio arrives faster than {self.settings.max_realtime_factor:g}x"
                                " real time")
        if self.resampler is not None:
            samples = self.resampler.resample_chunk(samples)
        await self._segment(samples)
        self.next_seq = seq + 1
        return True

    async def _segment(self, samples: np.ndarray) -> None:
        probs = await self.vad.probs(self.vad_stream, samples)
        for segment in self.segmenter.push(samples, probs):
            self._submit_final(segment)
        self._maybe_partial()

    async def end(self) -> None:
        """Client said `end`: close the open segment; `ended` follows the last final."""
        if self.ending:
            return
        if self.resampler is not None:
            tail = self.resampler.resample_chunk(np.zeros(0, np.float32), last=True)
            if len(tail):
                await self._segment(tail)
        for segment in self.segmenter.flush():
            self._submit_final(segment, cut=self.server_ended)
        self.ending = True
        self._check_ended()

    def _submit_final(self, segment: Segment, cut: bool = False) -> None:
        self._stable.reset()  # a final (never given a prefix) ends the agreement
        self.segments_submitted = segment.id + 1
        self.pending_finals += 1
        self._finals_drained.clear()
        self.scheduler.submit(DecodeRequest(
            self.id, segment.id, "final", segment.audio, segment.start, segment.end,
            speech_end=time.monotonic(), cut=cut,
            solo=segment.id == self._partial_failed_segment))  # suspect: alone, spare others

    def _tell_load(self) -> bool:
        """Tell the client when partials pause because the server is behind, and resume."""
        degraded = self.scheduler.degraded
        if degraded != self._told_degraded:
            self._told_degraded = degraded
            self._send({"type": "status", "state": "degraded" if degraded else "normal",
                        "message": "server is behind: partials paused, finals continue"
                        if degraded else "partials resumed"})
        return degraded

    def _maybe_partial(self) -> None:
        """Ask for a partial of the open segment when the PartialPlanner says one is due
        (cadence in stream time, new speech since the last one, a bounded window: see
        partial_policy). At most one in flight; none while degraded or after a segment's
        partial failed."""
        if self._tell_load() or not self.partials or self.partial_in_flight:
            return
        span = self.segmenter.open_span()  # no copy: most frames send no partial
        if span is None:
            return
        seg_id, start, end = span
        if seg_id == self._partial_failed_segment:
            return  # its audio failed alone (or killed workers twice): no more partials of it
        job = self._partial_plan.plan(seg_id, start, end, self.segmenter.open_probs())
        if job is None:
            return
        audio = self.segmenter.buffer.slice(job.start, job.end)  # a part of the open segment
        self.partial_in_flight = True
        req = DecodeRequest(self.id, seg_id, "partial", audio, job.start,
                            job.start + len(audio), prefix=self._stable.prefix(job))
        self._partial_job = (req, job)
        self.scheduler.submit(req)

    async def wait_finals_below(self, limit: int) -> None:
        """Backpressure: wait while more than `limit` finals are queued for this session."""
        while self.pending_finals > limit:
            self._finals_drained.clear()
            await self._finals_drained.wait()

    # ---- results out -------------------------------------------------------------------
    def on_result(self, req: DecodeRequest, text: str | None, error: str | None) -> None:
        if req.kind == "partial":
            self.partial_in_flight = False  # answered (text, dropped or failed): may ask again
            job = None
            if self._partial_job is not None and self._partial_job[0] is req:
                job, self._partial_job = self._partial_job[1], None
            if error is not None:
                self._partial_failed_segment = req.segment_id
            if job is None or error is not None:
                return
            if text is not None and req.segment_id == self.segmenter.open_segment_id:
                self._stable.record(job, req.tokens)
            shown = self._partial_plan.done(job, text)  # committed chunks + this text
            if shown and not self.ending and req.segment_id == self.segmenter.open_segment_id:
                self._send({"type": "partial", "segment": req.segment_id,
                            "start": round(job.segment_start / SAMPLE_RATE, 3),
                            "text": shown})
            return
        msg = {"type": "final", "segment": req.segment_id,
               "start": round(req.start / SAMPLE_RATE, 3),
               "end": round(req.end / SAMPLE_RATE, 3), "text": text or ""}
        if req.cut:
            msg["cut"] = True  # speech went on past `end`: a client that continues elsewhere
            # should replay from `start` rather than trust this text
        if error is not None:
            msg["error"] = str(ErrorCode.DECODE_FAILED)
            self._send(error_message(ErrorCode.DECODE_FAILED,
                                     f"segment {req.segment_id}: {error}", fatal=False))
        self._ready[req.segment_id] = msg
        self.pending_finals -= 1
        if self.pending_finals <= self.settings.max_pending_finals:
            self._finals_drained.set()
        next_id = len(self.finals)
        while next_id in self._ready:
            ready = self._ready.pop(next_id)
            self.finals.append(ready)
            self._send(ready)
            next_id += 1
        self._check_ended()

    def _ended_message(self) -> dict:
        return {"type": "ended", "segments": len(self.finals),
                "audio_seconds": round(self.segmenter.samples_seen / SAMPLE_RATE, 3)}

    def _check_ended(self) -> None:
        if self.ending and not self.ended and len(self.finals) == self.segments_submitted:
            self.ended = True
            self._send(self._ended_message())
            if self.conn is not None:
                self.conn.close(1000, "ended")
            self._on_ended(self)


class SessionRegistry:
    """Session id -> Session, for the whole server. The one place results are routed."""

    def __init__(self, settings: ServerSettings, vad: VadService, scheduler: Scheduler) -> None:
        self.settings = settings
        self.vad = vad
        self.scheduler = scheduler
        self.sessions: dict[str, Session] = {}
        self.sessions_started = 0
        self._reaper: asyncio.Task | None = None

    def create(self, session_id: str, token: str | None, sample_rate: int,
               partials: bool, model: str | None = None) -> Session:
        session = Session(session_id, token, sample_rate, partials, self.settings, self.vad,
                          self.scheduler, self._ended, model=model)
        self.sessions[session_id] = session
        self.sessions_started += 1
        return session

    def get(self, session_id: str) -> Session | None:
        return self.sessions.get(session_id)

    def deliver(self, req: DecodeRequest, text: str | None, error: str | None) -> None:
        session = self.sessions.get(req.session_id)
        if session is not None:
            session.on_result(req, text, error)

    def discard(self, session: Session) -> None:
        """Forget a session at once (after a fatal protocol error)."""
        if self.sessions.get(session.id) is session:
            del self.sessions[session.id]
            self.scheduler.drop_session(session.id)

    def _ended(self, session: Session) -> None:
        # keep an ended session for the grace period so a client that lost `ended` can resume
        session.expires_at = time.monotonic() + self.settings.resume_grace_s

    @property
    def active(self) -> int:
        return sum(1 for s in self.sessions.values() if not s.ended)

    def start(self) -> None:
        self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def stop(self) -> None:
        if self._reaper:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for sid, s in list(self.sessions.items()):
                if s.expires_at is None or now < s.expires_at:
                    continue
                if s.ended or s.conn is None:
                    del self.sessions[sid]
                    self.scheduler.drop_session(sid)
                    log.info("session %s %s", sid, "done" if s.ended else "expired")
