"""Client of the Earshot streaming protocol (docs/protocol.md), used by the desktop app,
`earshot transcribe --server` and the benchmarks.

`StreamClient` sends audio as numbered PCM16 frames and keeps every frame the server has
not acknowledged, so a dropped connection is resumed (same session id, `resume`) and the
missing frames re-sent; finals are de-duplicated by segment id, so each reaches the caller
exactly once, in order. `finish()` sends `end` and waits for `ended`, with a deadman
timer for when that signal never comes. All methods run on one asyncio loop.

Refusals: a server that is full, starting or draining answers the upgrade with HTTP 503
(429 when this address holds too many connections) and `Retry-After`. `connect(retry=...)`
then waits as the server asks and tries again under a `RetryPolicy` (bounded attempts, a
capped total wait, jittered waits never longer than `max_delay_s`); without a policy the
refusal is raised at once (the app, which has a local fallback, does that). The whole
handshake (TCP, TLS, upgrade, `hello` -> `ready`) is bounded by `connect_timeout_s`.
`model` asks for one of the server's models (None: its default); `model_used` is what the
server's `ready` said it decodes with, and a server that does not serve the model refuses
with StreamError `unknown_model` (its message lists the served ones).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import ssl
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

import aiohttp
import numpy as np

from edge_server.audio import float_to_pcm16
from edge_server.background import spawn
from edge_server.protocol import PROTOCOL_VERSION, STREAM_PATH, encode_frame

log = logging.getLogger(__name__)


class StreamError(RuntimeError):
    """The stream could not continue. `code` is the server's error code or a local one."""

    def __init__(self, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retry_after = retry_after


RETRYABLE = ("overloaded", "rate_limited")  # HTTP 503 / 429: the server asks to come back
FATAL_ON_RESUME = ("session_unknown", "unauthorized", "unsupported_version",
                   "identity_mismatch", "tls_required")


@dataclass(frozen=True)
class RetryPolicy:
    """How a stream refused with HTTP 503 (`overloaded`) or 429 (`rate_limited`) is tried again.

    Each wait is the server's `Retry-After` (without one: `first_delay_s`, doubling per
    refusal), stretched by a random 0..`jitter` fraction so that clients refused together
    do not come back together, and never longer than `max_delay_s`. It gives up -- raising
    the refusal with how long it waited -- after `max_attempts` attempts in all, or when the
    next wait would end more than `max_wait_s` after the first refusal. So no refused stream
    waits longer than `max_wait_s` in total.
    """

    max_attempts: int = 30
    max_wait_s: float = 300.0
    max_delay_s: float = 30.0
    first_delay_s: float = 1.0
    jitter: float = 0.25

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not (self.max_wait_s >= 0 and self.max_delay_s > 0 and self.first_delay_s > 0
                and 0 <= self.jitter <= 1):
            raise ValueError("retry waits must be positive and jitter within 0..1")

    def delay(self, refusals: int, retry_after: float | None,
              rng: random.Random | None = None) -> float:
        """Seconds to wait after the `refusals`-th refusal (1, 2, ...)."""
        base = retry_after if retry_after is not None and retry_after >= 0 else \
            self.first_delay_s * 2 ** min(refusals - 1, 16)
        base = min(base, self.max_delay_s)
        stretched = base * (1 + (rng or random).uniform(0, self.jitter))
        return min(stretched, self.max_delay_s)


# `earshot transcribe --server` and other batch callers: a full server is waited for, up
# to 5 minutes per file. (The app waits only on its last endpoint: APP_RETRY in dictation.)
BATCH_RETRY = RetryPolicy()


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds or an HTTP date); None if absent
    or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - time.time()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


@dataclass
class Final:
    segment: int
    start: float
    end: float
    text: str
    error: str | None = None
    received: float = field(default_factory=time.monotonic)


EventCallback = Callable[[dict], None]


class StreamClient:
    def __init__(self, url: str, token: str | None = None, session_id: str | None = None,
                 sample_rate: int = 16_000, partials: bool = True,
                 on_event: EventCallback | None = None, resume_window_s: float = 30.0,
                 connect_timeout_s: float = 10.0,
                 ssl_context: ssl.SSLContext | None = None,
                 fingerprint: str | None = None, model: str | None = None) -> None:
        """How a https/wss server is verified: `fingerprint` (SHA-256 of its certificate,
        hex, the pin taken at pairing) accepts exactly that certificate; else
        `ssl_context`; else the system's CAs (which honour SSL_CERT_FILE)."""
        self.ssl_context = ssl_context
        self.fingerprint = fingerprint
        base = url.rstrip("/")
        if base.startswith("http"):
            base = "ws" + base[4:]
        self.url = base if base.endswith(STREAM_PATH) else base + STREAM_PATH
        self.token = token
        self.session_id = session_id or uuid.uuid4().hex
        self.sample_rate = sample_rate
        self.partials = partials
        self.model = model
        self.model_used: str | None = None  # from `ready`
        self.on_event = on_event
        self.resume_window_s = resume_window_s
        self.connect_timeout_s = connect_timeout_s
        self.finals: list[Final] = []
        self.server: dict = {}
        self.reconnects = 0
        self.refusals = 0  # 503/429 refusals met by connect(retry=...)
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task | None = None
        self._unacked: deque[tuple[int, bytes]] = deque()  # (seq, frame bytes)
        self._sent_at: deque[float] = deque()  # send time of each unacked frame
        self._next_seq = 0
        self._acked = -1
        self._last_progress = 0.0  # when an ack last moved forward (monotonic)
        self._ended = asyncio.Event()
        self._connected = asyncio.Event()
        self._fatal: StreamError | None = None
        self._ending = False
        self._started = False
        self.server_ending = False  # the server ended the turn early (it is shutting down)
        self.latency_ms: float | None = None  # last ping round trip
        self._pinger: asyncio.Task | None = None

    # ---- connection ----------------------------------------------------------------------
    async def connect(self, retry: RetryPolicy | None = None) -> None:
        """Open the session (raises StreamError when refused: 503 full, 401, ...).

        With `retry`, a 503/429 refusal is tried again as the policy says (honouring the
        server's Retry-After) before it is raised; `refusals` counts them. Cancelling
        closes everything this call opened.
        """
        self._http = aiohttp.ClientSession()
        try:
            await self._open_with_retry(retry)
        except BaseException:
            await self._http.close()
            raise
        self._started = True

    async def _open_with_retry(self, retry: RetryPolicy | None) -> None:
        first_refusal: float | None = None
        while True:
            try:
                await self._open(resume=False)
                return
            except StreamError as exc:
                if retry is None or exc.code not in RETRYABLE:
                    raise
                now = time.monotonic()
                first_refusal = now if first_refusal is None else first_refusal
                self.refusals += 1
                waited = now - first_refusal
                wait = retry.delay(self.refusals, exc.retry_after)
                if self.refusals >= retry.max_attempts or waited + wait > retry.max_wait_s:
                    asked = (f", Retry-After {exc.retry_after:g} s"
                             if exc.retry_after is not None else "")
                    raise StreamError(exc.code, f"{exc.message}; still refused after "
                                      f"{self.refusals} attempt(s) over {waited:.0f} s"
                                      f"{asked}; gave up (waits are capped at "
                                      f"{retry.max_attempts} attempts / {retry.max_wait_s:g} s)",
                                      exc.retry_after) from None
                log.info("stream refused (%s); trying again in %.1f s", exc, wait)
                await asyncio.sleep(wait)

    async def _open(self, resume: bool) -> None:
        """One handshake, bounded by `connect_timeout_s` (StreamError 'timeout')."""
        assert self._http is not None
        if self.fingerprint and not self.url.startswith("wss://"):
            raise StreamError("tls_required", f"{self.url} is not wss://: a pinned server "
                              "is only reached over TLS (nothing was sent)")
        deadline = asyncio.get_running_loop().time() + self.connect_timeout_s
        try:
            async with asyncio.timeout_at(deadline):
                ws = await self._connect_ws()
        except TimeoutError:
            raise StreamError("timeout", f"{self.url} did not accept the stream within "
                              f"{self.connect_timeout_s:g} s") from None
        try:
            async with asyncio.timeout_at(deadline):
                data = await self._hello(ws, resume)
        except TimeoutError:
            await ws.close()
            raise StreamError("timeout", f"{self.url} sent no 'ready' within "
                              f"{self.connect_timeout_s:g} s") from None
        except BaseException:
            await ws.close()
            raise
        self.server = data.get("server", {})
        self.model_used = data.get("model") or self.server.get("model")
        self._ws = ws
        self._drop_acked(data["next_seq"] - 1)
        i = 0
        while i < len(self._unacked):  # resend what the server lacks, and frames added meanwhile
            seq, frame = self._unacked[i]
            i += 1
            if seq >= data["next_seq"]:
                await ws.send_bytes(frame)
        if self._ending:
            await ws.send_str(json.dumps({"type": "end"}))
        self._connected.set()
        self._reader = asyncio.get_running_loop().create_task(self._read(ws))
        if self._pinger is None:
            self._pinger = spawn(self._ping_loop(), "stream-ping")

    async def _connect_ws(self) -> aiohttp.ClientWebSocketResponse:
        assert self._http is not None
        try:
            ws = await self._http.ws_connect(
                self.url, params={"session": self.session_id}, heartbeat=20.0,
                ssl=self._ssl(),
                timeout=aiohttp.ClientWSTimeout(ws_close=5.0), max_msg_size=4 << 20)
        except aiohttp.WSServerHandshakeError as exc:
            retry = exc.headers.get("Retry-After") if exc.headers else None
            code = {503: "overloaded", 429: "rate_limited",
                    403: "tls_required"}.get(exc.status, f"http_{exc.status}")
            raise StreamError(code, f"server refused the stream (HTTP {exc.status})",
                              parse_retry_after(retry)) from None
        except aiohttp.ServerFingerprintMismatch:
            raise StreamError("identity_mismatch", f"{self.url} presented a certificate other "
                              "than the one paired; not sending audio or token") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise StreamError("unreachable", f"cannot reach {self.url}: {exc}") from None
        return ws

    async def _hello(self, ws: aiohttp.ClientWebSocketResponse, resume: bool) -> dict:
        """Send `hello`, return the `ready` (StreamError for anything else; `ws` stays open)."""
        last_final = self.finals[-1].segment if self.finals else -1
        hello = {
            "type": "hello", "protocol": PROTOCOL_VERSION, "session": self.session_id,
            "token": self.token, "resume": resume, "last_final": last_final,
            "partials": self.partials,
            "audio": {"encoding": "pcm_s16le", "sample_rate": self.sample_rate, "channels": 1},
        }
        if self.model:
            hello["model"] = self.model
        await ws.send_str(json.dumps(hello))
        msg = await ws.receive()
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise StreamError("closed", f"server closed the stream before ready ({ws.close_code})")
        data = json.loads(msg.data)
        if data.get("type") == "error":
            raise StreamError(data["code"], data["message"])
        if data.get("type") != "ready":
            raise StreamError("bad_message", f"expected ready, got {data.get('type')}")
        return data

    def _ssl(self) -> aiohttp.Fingerprint | ssl.SSLContext | bool:
        if self.fingerprint:
            return aiohttp.Fingerprint(bytes.fromhex(self.fingerprint))
        return self.ssl_context if self.ssl_context is not None else True

    async def _ping_loop(self, every_s: float = 5.0) -> None:
        """Measure the round trip now and then (shown to the user as the server's latency)."""
        while not self._ended.is_set():
            ws = self._ws
            if ws is not None and self._connected.is_set() and not ws.closed:
                with contextlib.suppress(ConnectionError, aiohttp.ClientError, RuntimeError):
                    await ws.send_str(json.dumps({"type": "ping", "t": time.monotonic()}))
            await asyncio.sleep(every_s)

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            kind = data.get("type")
            if kind == "ack":
                self._drop_acked(data["seq"])
            elif kind == "final" and not self._on_final(data):
                continue  # a final re-sent after a resume that we already hold
            elif kind == "ended":
                self._ended.set()
            elif kind == "pong" and isinstance(data.get("t"), (int, float)):
                self.latency_ms = (time.monotonic() - data["t"]) * 1000
                data["latency_ms"] = self.latency_ms
            elif kind == "error" and data.get("code") == "shutting_down":
                self.server_ending = True  # keep later audio: it is not transcribed here
            elif kind == "error" and data.get("fatal", True):
                self._fatal = StreamError(data["code"], data["message"])
            if self.on_event is not None and kind != "ack":
                self.on_event(data)
        if self._ws is ws:
            self._connected.clear()
            if not self._ended.is_set() and self._fatal is None:
                spawn(self._reconnect(), "stream-reconnect")
            elif self._fatal is not None:
                self._ended.set()

    async def _reconnect(self) -> None:
        deadline = time.monotonic() + self.resume_window_s
        delay = 0.2
        while time.monotonic() < deadline and not self._ended.is_set():
            try:
                await self._open(resume=True)
                self.reconnects += 1
                log.info("stream %s resumed", self.session_id)
                return
            except StreamError as exc:
                if exc.code in FATAL_ON_RESUME:
                    self._fatal = exc
                    break
                wait = delay if exc.retry_after is None else max(delay, exc.retry_after)
                await asyncio.sleep(min(wait, max(0.0, deadline - time.monotonic())))
                delay = min(delay * 2, 2.0)
        self._fatal = self._fatal or StreamError("unreachable", "connection lost; resume failed")
        self._ended.set()

    def _drop_acked(self, seq: int) -> None:
        if seq > self._acked:
            self._last_progress = time.monotonic()
        self._acked = max(self._acked, seq)
        while self._unacked and self._unacked[0][0] <= self._acked:
            self._unacked.popleft()
            self._sent_at.popleft()

    def _on_final(self, data: dict) -> bool:
        """Keep a final; False if it is one we already hold (re-sent on resume)."""
        if self.finals and data["segment"] <= self.finals[-1].segment:
            return False
        self.finals.append(Final(data["segment"], data["start"], data["end"], data["text"],
                                 data.get("error")))
        return True

    # ---- audio -------------------------------------------------------------------------
    async def send_pcm16(self, pcm16: bytes) -> None:
        """Send one frame of PCM16 LE mono at `sample_rate`. Raises StreamError if fatal."""
        if self._fatal is not None:
            raise self._fatal
        frame = encode_frame(self._next_seq, pcm16)
        self._unacked.append((self._next_seq, frame))
        self._sent_at.append(time.monotonic())
        self._next_seq += 1
        if self._connected.is_set() and self._ws is not None and not self.server_ending:
            with contextlib.suppress(ConnectionError, aiohttp.ClientError, RuntimeError):
                await self._ws.send_bytes(frame)

    async def send_audio(self, samples: np.ndarray) -> None:
        await self.send_pcm16(float_to_pcm16(samples))

    async def finish(self, timeout_s: float = 60.0) -> list[Final]:
        """Send `end`, wait for `ended` (deadman: StreamError 'timeout'), close, return finals."""
        self._ending = True
        if self._connected.is_set() and self._ws is not None:
            with contextlib.suppress(ConnectionError, aiohttp.ClientError, RuntimeError):
                await self._ws.send_str(json.dumps({"type": "end"}))
        return await self.wait_ended(timeout_s)

    async def wait_ended(self, timeout_s: float) -> list[Final]:
        """Wait for `ended` (the server ending the turn, e.g. when it shuts down), close."""
        try:
            await asyncio.wait_for(self._ended.wait(), timeout_s)
        except TimeoutError:
            raise StreamError("timeout", f"no 'ended' within {timeout_s:g} s") from None
        finally:
            await self.close()
        if self._fatal is not None:
            raise self._fatal
        return self.finals

    async def close(self) -> None:
        if self._pinger is not None:
            self._pinger.cancel()
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._http is not None:
            await self._http.close()

    async def drop_connection(self) -> None:
        """Close the socket without ending the session (tests and failover drills)."""
        if self._ws is not None:
            await self._ws.close(code=4000)

    @property
    def unacked_frames(self) -> int:
        return len(self._unacked)

    def oldest_unacked_age(self) -> float:
        """Seconds the oldest frame has waited for its ack (0 when all are acked)."""
        return time.monotonic() - self._sent_at[0] if self._sent_at else 0.0

    def stalled_for(self) -> float:
        """Seconds frames have been waiting without any ack progress (0 when all are
        acked): a server working through a replayed backlog acks as it goes and is not
        stalled, however old its oldest frame; a frozen one stops acking."""
        if not self._sent_at:
            return 0.0
        return time.monotonic() - max(self._sent_at[0], self._last_progress)

    @property
    def failed(self) -> StreamError | None:
        """The fatal error that ended this stream, if any."""
        return self._fatal

    @property
    def ended(self) -> bool:
        return self._ended.is_set()
