"""One dictation's trip through one or more servers, without losing a word.

`Dictation` takes 16 kHz float32 audio (`feed`, any chunk size) and streams it to the first
endpoint that accepts (preferred server first, the embedded local server last). It keeps
all audio not yet covered by a final. When the stream fails -- connection lost and not
resumed within `resume_s`, refused, frames unacknowledged for `stall_s`, the server ending
the turn early (shutdown), or no `ended` within the deadman time -- it opens a new session
on the next endpoint and replays the uncovered audio there, then continues live. Finals
are reported once each, in order, in dictation time; finals of an abandoned stream are
ignored (their audio is replayed). All methods run on one asyncio loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from desktop.stream_client import StreamClient, StreamError
from edge_server.background import spawn
from edge_server.segmenter import AudioBuffer

log = logging.getLogger(__name__)
RATE = 16_000
FRAME = 1_600  # 100 ms


@dataclass(frozen=True)
class Endpoint:
    name: str  # shown to the user: "This computer" or a server's name
    url: str
    token: str | None = None
    device: str | None = None  # "cuda"/"cpu" when known
    local: bool = False
    fingerprint: str | None = None  # pinned certificate SHA-256 (https servers paired with)


@dataclass(frozen=True)
class FinalText:
    index: int  # 0, 1, 2, ... over the whole dictation
    start: float  # seconds of dictation time
    end: float
    text: str
    error: str | None
    endpoint: str


class DictationListener:
    """What the UI hears. Called on the loop thread; marshal to the GUI yourself."""

    def on_partial(self, text: str) -> None: ...
    def on_final(self, final: FinalText) -> None: ...
    def on_state(self, state: str, endpoint: Endpoint | None, detail: str = "") -> None: ...
    def on_latency(self, endpoint: Endpoint, milliseconds: float) -> None: ...


class DictationFailed(RuntimeError):
    """No endpoint could take the audio; it is still in the journal."""


class Dictation:
    def __init__(self, endpoints: list[Endpoint], listener: DictationListener,
                 stall_s: float = 3.0, resume_s: float = 1.0, deadman_s: float = 15.0,
                 client_factory: Callable[..., StreamClient] = StreamClient) -> None:
        if not endpoints:
            raise ValueError("a dictation needs at least one endpoint")
        self.endpoints = endpoints
        self.listener = listener
        self.stall_s = stall_s
        self.resume_s = resume_s
        self.deadman_s = deadman_s
        self._client_factory = client_factory
        self.audio = AudioBuffer()  # dictation audio not yet covered by finals
        self.covered = 0  # samples of dictation time covered by finals
        self.finals: list[FinalText] = []
        self.failovers = 0
        self._client: StreamClient | None = None
        self._endpoint: Endpoint | None = None
        self._offset = 0  # dictation sample at which the current stream started
        self._sent = 0  # dictation samples sent to the current stream
        self._generation = 0
        self._candidates: list[Endpoint] = []
        self._new_audio = asyncio.Event()
        self._sender: asyncio.Task | None = None
        self._monitor: asyncio.Task | None = None
        self._switching: asyncio.Lock = asyncio.Lock()
        self._finishing = False

    @property
    def endpoint(self) -> Endpoint | None:
        return self._endpoint

    # ---- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Connect to the first endpoint that accepts (raises DictationFailed if none)."""
        self._candidates = list(self.endpoints)
        await self._open_next("connecting")
        self._sender = spawn(self._send_loop(), "dictation-sender")
        self._monitor = spawn(self._watch(), "dictation-monitor")

    def feed(self, samples: np.ndarray) -> None:
        """Append dictation audio (16 kHz mono float32)."""
        self.audio.append(np.asarray(samples, dtype=np.float32))
        self._new_audio.set()

    async def finish(self) -> list[FinalText]:
        """Send the rest, end the turn (failing over if needed), return all finals."""
        self._finishing = True
        while True:
            await self._flush()
            client, generation = self._client, self._generation
            assert client is not None
            try:
                await client.finish(timeout_s=self.deadman_s + self._backlog_s())
            except StreamError as exc:
                if generation != self._generation:
                    continue  # a failover already happened meanwhile
                await self._failover(f"{exc.code}: {exc.message}")
                continue
            if generation != self._generation:
                continue
            if client.server_ending and self.covered < self.audio.end:
                await self._failover("the server ended the turn early (shutting down)")
                continue
            break
        await self._stop_tasks()
        self.listener.on_state("done", self._endpoint)
        return self.finals

    async def abort(self) -> None:
        await self._stop_tasks()
        if self._client is not None:
            await self._client.close()

    # ---- streaming -----------------------------------------------------------------------
    def _backlog_s(self) -> float:
        return (self.audio.end - self.covered) / RATE * 0.5

    async def _open_next(self, state: str) -> None:
        while self._candidates:
            endpoint = self._candidates.pop(0)
            self._generation += 1
            generation = self._generation
            self.listener.on_state(state, endpoint)
            client = self._client_factory(
                endpoint.url, token=endpoint.token, resume_window_s=self.resume_s,
                fingerprint=endpoint.fingerprint,
                on_event=lambda e, g=generation: self._on_event(g, e))
            try:
                await client.connect()
            except StreamError as exc:
                log.info("endpoint %s refused: %s", endpoint.name, exc)
                self.listener.on_state("error", endpoint, str(exc))
                continue
            self._client, self._endpoint = client, endpoint
            self._offset = self._sent = self.covered
            self.listener.on_state("fallback" if self.failovers else "connected", endpoint)
            self._new_audio.set()
            return
        raise DictationFailed("no server could take the audio")

    async def _failover(self, reason: str) -> None:
        async with self._switching:
            old = self._client
            log.warning("stream on %s failed (%s); continuing elsewhere",
                        self._endpoint.name if self._endpoint else "?", reason)
            self.failovers += 1
            self._generation += 1  # from here on, the old stream's events are ignored
            if old is not None:
                spawn(old.close(), "close-abandoned-stream")
            if not self._candidates:
                self._candidates = [e for e in self.endpoints if e.local and e != self._endpoint]
            self.listener.on_state("reconnecting", self._endpoint, reason)
            await self._open_next("reconnecting")

    async def _flush(self) -> None:
        """Wait until every sample fed so far went out on a live stream."""
        if self._client is None:  # everything failed earlier: try every endpoint once more
            self._candidates = list(self.endpoints)
            await self._open_next("reconnecting")
        while self._sent < self.audio.end:
            self._new_audio.set()
            await asyncio.sleep(0.01)

    async def _send_loop(self) -> None:
        while True:
            await self._new_audio.wait()
            self._new_audio.clear()
            async with self._switching:
                client = self._client
                while client is not None and self._sent < self.audio.end:
                    end = min(self._sent + FRAME, self.audio.end)
                    if end - self._sent < FRAME and not self._finishing:
                        break  # wait for a whole frame unless the dictation is ending
                    frame = self.audio.slice(self._sent, end)
                    try:
                        await client.send_audio(frame)
                    except StreamError:
                        break  # the monitor fails over
                    self._sent = end

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(0.2)
            client = self._client
            if client is None:
                continue
            reason = None
            if client.failed is not None:
                reason = f"{client.failed.code}: {client.failed.message}"
            elif client.oldest_unacked_age() > self.stall_s:
                reason = f"no acknowledgement for {self.stall_s:g} s"
            elif client.server_ending and not self._finishing and client.ended:
                reason = "the server ended the turn early (shutting down)"
            if reason is not None:
                try:
                    await self._failover(reason)
                except DictationFailed:
                    self._client = None
                    self.listener.on_state("offline", None, "no server can take the audio; "
                                           "it is kept in the journal")

    async def _stop_tasks(self) -> None:
        for task in (self._sender, self._monitor):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    def _has_fallback(self) -> bool:
        return any(e != self._endpoint for e in self.endpoints)

    # ---- events --------------------------------------------------------------------------
    def _on_event(self, generation: int, event: dict) -> None:
        if generation != self._generation:
            return  # an abandoned stream: its audio is being replayed elsewhere
        kind = event.get("type")
        if kind == "partial":
            self.listener.on_partial(event["text"])
        elif kind == "final" and event.get("cut") and self._has_fallback():
            return  # cut short by a server shutdown: its audio is replayed elsewhere, whole
        elif kind == "final":
            start = self._offset / RATE + event["start"]
            end = self._offset / RATE + event["end"]
            final = FinalText(len(self.finals), start, end, event["text"], event.get("error"),
                              self._endpoint.name if self._endpoint else "?")
            self.finals.append(final)
            self.covered = max(self.covered, round(end * RATE))
            self.audio.drop_before(self.covered)
            self.listener.on_final(final)
        elif kind == "pong" and "latency_ms" in event and self._endpoint is not None:
            self.listener.on_latency(self._endpoint, event["latency_ms"])
        elif kind == "status":
            self.listener.on_state("degraded" if event["state"] == "degraded" else "connected",
                                   self._endpoint, event.get("message", ""))
