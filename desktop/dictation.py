"""One dictation's trip through one or more servers, without losing a word.

`Dictation` takes 16 kHz float32 audio (`feed`, any chunk size, also before `start`) and
streams it to the first endpoint that accepts (preferred server first, the embedded local
server last). It keeps all audio not yet covered by a final. When the stream fails --
connection lost and not resumed within `resume_s`, refused, no answer within
`connect_timeout_s`, frames waiting `stall_s` without any ack progress, the server ending
the turn early (shutdown), or no `ended` within the deadman time -- it opens a new session
on the next endpoint and replays the uncovered audio there, then continues live. Finals
are reported once each, in order, in dictation time; finals of an abandoned stream are
ignored (their audio is replayed).

Refusals (HTTP 503/429): an endpoint with another one after it is skipped at once (no
waiting for a remote server's Retry-After while the local one can take the audio); the
last endpoint left is waited for under `retry` (APP_RETRY: at most 4 attempts / 20 s).

Failed finals (`error`, e.g. `decode_failed`: the server's worker crashed on the segment)
do not cover their audio: the stream is abandoned at that final and everything from the
end of the last good final is replayed -- first to a new session on the same server (once
per trouble spot), then to the local fallback. Each endpoint gets at most DECODE_TRIES
tries of one trouble spot (a stream that fails in any way while the spot is still ahead
of it counts as a try). When no endpoint has a try left, the spot is reported as a failed
final (empty text, `error` set) and counted in `failed_segments`, so the caller keeps the
audio for recovery, and the dictation goes on after it.

All methods run on one asyncio loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from desktop.stream_client import RetryPolicy, StreamClient, StreamError
from edge_server.background import spawn
from edge_server.segmenter import AudioBuffer

log = logging.getLogger(__name__)
RATE = 16_000
FRAME = 1_600  # 100 ms
# The last endpoint left (usually this computer's) is waited for when it refuses with
# Retry-After, e.g. while its worker restarts: at most 4 attempts and 20 s in all.
APP_RETRY = RetryPolicy(max_attempts=4, max_wait_s=20.0, max_delay_s=10.0)
DECODE_TRIES = 2  # tries of one stretch of audio per endpoint before moving on


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
    def __init__(self, endpoints: list[Endpoint] | None, listener: DictationListener,
                 stall_s: float = 3.0, resume_s: float = 1.0, deadman_s: float = 15.0,
                 connect_timeout_s: float = 5.0, retry: RetryPolicy | None = APP_RETRY,
                 client_factory: Callable[..., StreamClient] = StreamClient) -> None:
        """`endpoints` may be None when `start(endpoints)` supplies them (audio can be fed
        meanwhile)."""
        if endpoints is not None and not endpoints:
            raise ValueError("a dictation needs at least one endpoint")
        self.endpoints = list(endpoints or [])
        self.listener = listener
        self.stall_s = stall_s
        self.resume_s = resume_s
        self.deadman_s = deadman_s
        self.connect_timeout_s = connect_timeout_s
        self.retry = retry
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
        self.failed_segments = 0  # finals reported with an error: no endpoint could decode them
        self.decode_retries = 0  # failed finals replayed elsewhere instead of reported
        self._retry: tuple[str, list[Endpoint]] | None = None  # a failed final to replay
        self._trouble: tuple[int, int] | None = None  # samples of the last failed decode
        self._trouble_tries: dict[Endpoint, int] = {}

    @property
    def endpoint(self) -> Endpoint | None:
        return self._endpoint

    # ---- lifecycle -----------------------------------------------------------------------
    async def start(self, endpoints: list[Endpoint] | None = None) -> None:
        """Connect to the first endpoint that accepts (raises DictationFailed if none).

        Cancelling it (a caller's timeout) leaves nothing running or connected."""
        if endpoints is not None:
            if not endpoints:
                raise ValueError("a dictation needs at least one endpoint")
            self.endpoints = list(endpoints)
        if not self.endpoints:
            raise ValueError("a dictation needs at least one endpoint")
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
            if self._retry is not None:
                reason, candidates = self._retry
                await self._failover(reason, client, candidates)
                continue
            if client.server_ending and self.covered < self.audio.end:
                await self._failover("the server ended the turn early (shutting down)")
                continue
            break
        await self._stop_tasks()
        self.listener.on_state("done", self._endpoint)
        return self.finals

    async def abort(self) -> None:
        """Stop sending and close the stream (nothing is left running)."""
        await self._stop_tasks()
        if self._client is not None:
            await self._client.close()

    @property
    def complete(self) -> bool:
        """True when every final reported so far has text (none failed)."""
        return self.failed_segments == 0

    # ---- streaming -----------------------------------------------------------------------
    def _backlog_s(self) -> float:
        return (self.audio.end - self.covered) / RATE * 0.5

    async def _open_next(self, state: str) -> None:
        while self._candidates:
            endpoint = self._candidates.pop(0)
            last = not self._candidates  # nothing to fall back on: wait as it asks
            self._generation += 1
            generation = self._generation
            self.listener.on_state(state, endpoint)
            client = self._client_factory(
                endpoint.url, token=endpoint.token, resume_window_s=self.resume_s,
                fingerprint=endpoint.fingerprint, connect_timeout_s=self.connect_timeout_s,
                on_event=lambda e, g=generation: self._on_event(g, e))
            try:
                await client.connect(retry=self.retry if last else None)
            except StreamError as exc:
                log.info("endpoint %s refused: %s", endpoint.name, exc)
                self.listener.on_state("error", endpoint, str(exc))
                continue
            self._client, self._endpoint = client, endpoint
            self._offset = self._sent = self.covered
            fallback = self.failovers and endpoint != self.endpoints[0]
            self.listener.on_state("fallback" if fallback else "connected", endpoint)
            self._new_audio.set()
            return
        raise DictationFailed("no server could take the audio")

    async def _failover(self, reason: str, client: StreamClient | None = None,
                        candidates: list[Endpoint] | None = None) -> None:
        """Abandon the current stream and replay the uncovered audio on `candidates` (default:
        the endpoints not tried yet, else the local ones). With `client`, only if that is
        still the current stream (another task may have failed over already)."""
        async with self._switching:
            old = self._client
            if client is not None and old is not client:
                return
            log.warning("stream on %s failed (%s); continuing elsewhere",
                        self._endpoint.name if self._endpoint else "?", reason)
            self.failovers += 1
            self._generation += 1  # from here on, the old stream's events are ignored
            self._retry = None
            if old is not None:
                spawn(old.close(), "close-abandoned-stream")
            if candidates is None:  # not a planned decode retry (that one counted its try)
                self._count_try(self._endpoint)
                candidates = self._candidates or [
                    e for e in self.endpoints if e.local and e != self._endpoint]
            self._candidates = self._spare(candidates)
            self.listener.on_state("reconnecting", self._endpoint, reason)
            await self._open_next("reconnecting")

    async def _flush(self) -> None:
        """Wait until every sample fed so far went out on a live stream."""
        if self._client is None:  # everything failed earlier: try every endpoint once more
            self._candidates = self._spare(self.endpoints)
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
            reason, candidates = None, None
            if self._retry is not None:
                reason, candidates = self._retry
            elif client.failed is not None:
                reason = f"{client.failed.code}: {client.failed.message}"
            elif client.stalled_for() > self.stall_s:
                reason = f"no acknowledgement for {self.stall_s:g} s"
            elif client.server_ending and not self._finishing and client.ended:
                reason = "the server ended the turn early (shutting down)"
            if reason is not None:
                try:
                    await self._failover(reason, client, candidates)
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
        if generation != self._generation or self._retry is not None:
            return  # an abandoned stream: its audio is being replayed elsewhere
        kind = event.get("type")
        if kind == "partial":
            self.listener.on_partial(event["text"])
        elif kind == "final" and event.get("cut") and self._has_fallback():
            return  # cut short by a server shutdown: its audio is replayed elsewhere, whole
        elif kind == "final":
            start = self._offset / RATE + event["start"]
            end = self._offset / RATE + event["end"]
            if event.get("error") and self._plan_decode_retry(event, start, end):
                return  # not covered: replayed from the end of the last good final
            final = FinalText(len(self.finals), start, end, event["text"], event.get("error"),
                              self._endpoint.name if self._endpoint else "?")
            self.finals.append(final)
            if final.error:
                self.failed_segments += 1
            self.covered = max(self.covered, round(end * RATE))
            self.audio.drop_before(self.covered)
            self.listener.on_final(final)
        elif kind == "pong" and "latency_ms" in event and self._endpoint is not None:
            self.listener.on_latency(self._endpoint, event["latency_ms"])
        elif kind == "status":
            self.listener.on_state("degraded" if event["state"] == "degraded" else "connected",
                                   self._endpoint, event.get("message", ""))

    # ---- failed decodes -------------------------------------------------------------------
    def _trouble_open(self) -> bool:
        """A stretch of audio failed to decode and no good final has got past it yet."""
        return self._trouble is not None and self.covered < self._trouble[1]

    def _usable(self, endpoint: Endpoint) -> bool:
        return not self._trouble_open() or self._trouble_tries.get(endpoint, 0) < DECODE_TRIES

    def _count_try(self, endpoint: Endpoint | None) -> None:
        """A stream failed (stalled, dropped, ...) while the trouble spot was still ahead of
        it: that counts as one of the endpoint's tries, so retries stay bounded."""
        if endpoint is not None and self._trouble_open():
            self._trouble_tries[endpoint] = self._trouble_tries.get(endpoint, 0) + 1

    def _spare(self, candidates: list[Endpoint]) -> list[Endpoint]:
        """`candidates` that may still try the open trouble spot (else any endpoint that
        may); when none may, the spot is given up -- reported as a failed final -- and
        `candidates` go on with the audio after it."""
        if not self._trouble_open():
            return list(candidates)
        usable = [e for e in candidates if self._usable(e)] or [
            e for e in self.endpoints if self._usable(e)]
        if usable:
            return usable
        self._give_up_trouble_spot()
        return list(candidates)

    def _give_up_trouble_spot(self) -> None:
        assert self._trouble is not None
        lo, hi = self._trouble
        final = FinalText(len(self.finals), max(lo, self.covered) / RATE, hi / RATE, "",
                          "decode_failed", self._endpoint.name if self._endpoint else "?")
        log.warning("audio %.2f-%.2f s failed on every endpoint; reported as failed",
                    final.start, final.end)
        self.finals.append(final)
        self.failed_segments += 1
        self.covered = max(self.covered, hi)
        self.audio.drop_before(self.covered)
        self._trouble, self._trouble_tries = None, {}
        self.listener.on_final(final)

    def _plan_decode_retry(self, event: dict, start: float, end: float) -> bool:
        """A final came with `error`: plan a replay of its audio and return True, or return
        False when every allowed try already failed on this stretch (then it is reported).

        Tries are counted per endpoint for one trouble spot: failed finals whose audio
        overlaps count against the same spot. Order: the same server once more (a new
        session), then the local fallback, each at most DECODE_TRIES times.
        """
        endpoint = self._endpoint
        if endpoint is None:
            return False
        lo, hi = round(start * RATE), round(end * RATE)
        if (self._trouble is None or not self._trouble_open() or lo > self._trouble[1]
                or hi < self._trouble[0]):  # a new trouble spot: every endpoint may try it
            self._trouble, self._trouble_tries = (lo, hi), {}
        else:
            self._trouble = (min(lo, self._trouble[0]), max(hi, self._trouble[1]))
        tries = self._trouble_tries.get(endpoint, 0) + 1
        self._trouble_tries[endpoint] = tries
        plan = [endpoint] if tries < DECODE_TRIES else []
        plan += [e for e in self.endpoints if e.local and e != endpoint and self._usable(e)]
        if not plan:
            log.warning("segment %.2f-%.2f s failed on every endpoint (%s); reported as failed",
                        start, end, event.get("error"))
            return False
        reason = (f"segment {start:.1f}-{end:.1f} s could not be decoded on {endpoint.name} "
                  f"({event.get('error')}); trying it again on {plan[0].name}")
        log.warning("%s", reason)
        self.decode_retries += 1
        self._retry = (reason, plan)
        return True
