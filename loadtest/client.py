"""One load-test stream through the real streaming protocol (docs/protocol.md).

`run_stream` connects with the project's StreamClient (hello/ready, numbered PCM16
frames, acks, resume after a dropped connection), sends the script's frames paced at
real time by a `Pacer` (each frame when its audio is complete), sends `end`, waits for
`ended`, and returns an `Outcome`. Every final *message* is recorded as it arrives,
before the client's own de-duplication, so accounting sees duplicates and disorder. A
refusal (HTTP 503 / 429) is not retried: it is recorded with how long it took. Runs on
one asyncio loop; many streams share it.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from desktop.stream_client import StreamClient, StreamError
from edge_server.audio import float_to_pcm16
from loadtest.pacing import Pacer
from loadtest.speech import RATE, Script

FRAME = 1_600  # 100 ms frames, like the desktop app


@dataclass(frozen=True)
class Received:
    """A final message as it arrived (`at`: monotonic time)."""

    segment: int
    start: float
    end: float
    text: str
    error: str | None
    at: float


@dataclass
class Outcome:
    """What happened to one stream. `status`: "ok" (ended), "refused" (HTTP 503, or
    `overloaded` + close 4503 after the hello when admitted together with others),
    "rate_limited" (HTTP 429), "unauthorized" (bad token) or "failed" (`error` says why)."""

    status: str = "failed"
    error: str | None = None
    refused_s: float | None = None  # connect attempt -> refusal, for refused streams
    refused_after_hello: bool = False  # refused with `overloaded` + 4503, not HTTP 503
    connect_s: float | None = None  # connect attempt -> ready
    t0: float | None = None  # monotonic time of stream second 0
    finals: list[Received] = field(default_factory=list)
    partials: list[tuple[float, int]] = field(default_factory=list)  # (at, segment)
    lags: list[float] = field(default_factory=list)  # how late each frame went out
    reconnects: int = 0
    audio_s: float = 0.0


class RecordingClient(StreamClient):
    """A StreamClient that also records every final message before de-duplication, and
    connects through `http` (an aiohttp session shared by many clients: a herd's load
    generator then spends its CPU on the protocol, not on building sessions; never closed
    here) when given."""

    def __init__(self, *args, http: aiohttp.ClientSession | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.raw_finals: list[Received] = []
        self.shared_http = http

    async def connect(self, retry=None) -> None:
        if self.shared_http is None:
            return await super().connect(retry)
        self._http = self.shared_http
        await self._open_with_retry(retry)
        self._started = True

    async def close(self) -> None:
        if self.shared_http is not None:
            self._http = None  # the caller's, left open
        await super().close()

    def _on_final(self, data: dict) -> bool:
        self.raw_finals.append(Received(int(data["segment"]), float(data["start"]),
                                        float(data["end"]), str(data.get("text") or ""),
                                        data.get("error"), time.monotonic()))
        return super()._on_final(data)


STATUS_OF = {"overloaded": "refused", "rate_limited": "rate_limited",
             "unauthorized": "unauthorized"}


async def run_stream(url: str, script: Script, *, token: str | None = None,
                     ssl_context: ssl.SSLContext | None = None, fingerprint: str | None = None,
                     partials: bool = True, start_delay_s: float = 0.0,
                     connect_timeout_s: float = 10.0, finish_timeout_s: float = 120.0,
                     progress: Callable[[float], None] | None = None,
                     http: aiohttp.ClientSession | None = None) -> Outcome:
    """Stream `script` at real time; never raises for a server-side failure (see Outcome)."""
    if start_delay_s > 0:
        await asyncio.sleep(start_delay_s)
    out = Outcome()
    client = RecordingClient(url, token=token, partials=partials, ssl_context=ssl_context,
                             fingerprint=fingerprint, connect_timeout_s=connect_timeout_s,
                             on_event=lambda e: _on_event(out, e), http=http)
    began = time.monotonic()
    try:
        await client.connect()
    except StreamError as exc:
        out.status = STATUS_OF.get(exc.code, "failed")
        out.error = f"{exc.code}: {exc.message}"
        out.refused_s = time.monotonic() - began
        out.refused_after_hello = exc.code == "overloaded" and "(HTTP 503)" not in exc.message
        return out
    out.connect_s = time.monotonic() - began
    pacer = Pacer(FRAME, RATE)
    out.t0 = pacer.t0
    try:
        pcm = float_to_pcm16(script.audio)
        frames = (len(script.audio) + FRAME - 1) // FRAME
        for i in range(frames):
            await pacer.wait(i)
            await client.send_pcm16(pcm[2 * i * FRAME: 2 * (i + 1) * FRAME])
            if progress is not None and i % 10 == 9:
                progress(10 * FRAME / RATE)
        if progress is not None:
            progress(len(script.audio) / RATE - frames // 10 * 10 * FRAME / RATE)
        await client.finish(timeout_s=finish_timeout_s)
        out.status = "ok"
    except StreamError as exc:
        out.error = f"{exc.code}: {exc.message}"
    except (aiohttp.ClientError, OSError) as exc:
        out.error = f"connection: {exc}"
    finally:
        await client.close()
        out.finals = list(client.raw_finals)
        out.lags = pacer.lags
        out.reconnects = client.reconnects
        out.audio_s = script.seconds
    return out


def shared_sessions(sources: list[str] | None, count: int = 1) -> list[aiohttp.ClientSession]:
    """Sessions for many clients: one per source address (local_addr), or `count` using
    the system's choice; no connection limit. Close them after use (on the loop)."""
    return [aiohttp.ClientSession(connector=aiohttp.TCPConnector(
        limit=0, force_close=True, local_addr=(src, 0) if src else None))
        for src in (sources or [None] * count)]


def _on_event(out: Outcome, event: dict) -> None:
    if event.get("type") == "partial":
        out.partials.append((time.monotonic(), int(event.get("segment", -1))))
