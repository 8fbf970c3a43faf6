"""`slowloris`: `--idle` connections (default 1000) open the WebSocket and never send the
hello, while `--streams` real streams (default 10) run.

Each idle connection waits for the server to close it, records how long that took and
why (the server's `error` code, e.g. `handshake_timeout`, and the close code), and opens
again at once, so the pressure lasts as long as the real streams. The real streams start
once the first wave of idle connections is open. Against `--server local` the idle
connections come from 127.0.0.2, 127.0.0.3, ... (250 per address, as an attacker on other
hosts would: the server allows `max_connections_per_ip` (600) per address, and the real
streams come from 127.0.0.1); elsewhere from `--sources IP,...` or this host's
default address (then the per-address limit answers 429 beyond 600, which is reported).

Checks: every idle connection the server accepted was cut within `--hello-timeout`
(default the server's 10 s) + 1 s, none outlived it; the real streams' p95 final latency
is below `--bound` with nothing lost or duplicated.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter

import aiohttp

from desktop.stream_client import StreamClient
from loadtest.context import Context
from loadtest.level import drive, level_row, server_latency
from loadtest.modes import check
from loadtest.speech import build_scripts
from loadtest.stats import percentiles
from loadtest.target import Target

DEFAULT_STREAMS = 10
DEFAULT_IDLE = 1000
SERVER_HELLO_TIMEOUT_S = 10.0  # the server's default handshake_timeout_s
PER_SOURCE = 250


def client_sources(ctx: Context, n: int) -> list[str] | None:
    """Source addresses for `n` connections: `--sources`, else for a local server
    127.0.0.2, .3, ... (PER_SOURCE each); None: the system's choice."""
    if ctx.args.sources:
        return ctx.args.sources.split(",")
    if ctx.local:
        return [f"127.0.0.{2 + k}" for k in range((n + PER_SOURCE - 1) // PER_SOURCE)]
    return None


async def _idle(ws_url: str, http: aiohttp.ClientSession, stop: asyncio.Event,
                records: list[tuple[str, float]], opened: asyncio.Event | None) -> None:
    """One idle connection, re-opened each time the server cuts it, until `stop`."""
    while not stop.is_set():
        began = time.monotonic()
        try:
            ws = await http.ws_connect(ws_url, params={"session": uuid.uuid4().hex},
                                       autoping=True, heartbeat=None,
                                       timeout=aiohttp.ClientWSTimeout(ws_close=5.0))
        except aiohttp.WSServerHandshakeError as exc:
            records.append((f"http {exc.status}", time.monotonic() - began))
            await asyncio.sleep(1.0)
            continue
        except (aiohttp.ClientError, OSError) as exc:
            records.append((f"connect error: {type(exc).__name__}", time.monotonic() - began))
            await asyncio.sleep(1.0)
            continue
        start = time.monotonic()
        if opened is not None:
            opened.set()
            opened = None
        code = None
        stopper = asyncio.ensure_future(stop.wait())
        try:
            while True:
                reader = asyncio.ensure_future(ws.receive())
                done, _ = await asyncio.wait({reader, stopper},
                                             return_when=asyncio.FIRST_COMPLETED)
                if reader not in done:
                    reader.cancel()
                    records.append(("still open at the end", time.monotonic() - start))
                    await ws.close()
                    return
                msg = reader.result()
                if msg.type == aiohttp.WSMsgType.TEXT:
                    code = _error_code(msg.data) or code
                    continue
                if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING,
                                aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                    break
            records.append((f"{code or 'closed'} ({ws.close_code})", time.monotonic() - start))
        finally:
            stopper.cancel()
            await ws.close()


def _error_code(text: str) -> str | None:
    import json

    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data.get("code") if data.get("type") == "error" else None


async def _run(ctx: Context, target: Target, n_idle: int, scripts) -> tuple[list, list]:
    a = ctx.args
    ws_url = StreamClient(target.url).url
    stop = asyncio.Event()
    records: list[tuple[str, float]] = []
    sources = client_sources(ctx, n_idle) or [None]
    sessions = [aiohttp.ClientSession(connector=aiohttp.TCPConnector(
        limit=0, local_addr=(src, 0) if src else None,
        ssl=False if target.url.startswith("https") else None)) for src in sources]
    opened = [asyncio.Event() for _ in range(n_idle)]
    idlers = [asyncio.ensure_future(_idle(ws_url, sessions[k % len(sessions)], stop, records,
                                          opened[k])) for k in range(n_idle)]
    try:
        # the first wave open (or refused: then a record exists), at most 30 s
        deadline = time.monotonic() + 30
        while (sum(e.is_set() for e in opened) + len(records) < n_idle
               and time.monotonic() < deadline):
            await asyncio.sleep(0.1)
        outcomes = await drive(target, scripts, partials=not a.no_partials,
                               stagger_s=a.stagger, progress=ctx.progress.update)
    finally:
        stop.set()
        await asyncio.gather(*idlers, return_exceptions=True)
        for s in sessions:
            await s.close()
    return outcomes, records


def run(ctx: Context) -> dict:
    a = ctx.args
    n_idle = a.idle if a.idle is not None else DEFAULT_IDLE
    n = a.streams or DEFAULT_STREAMS
    hello_timeout = a.hello_timeout or SERVER_HELLO_TIMEOUT_S
    target = ctx.open()
    probe = target.probe()
    try:
        scripts = build_scripts(ctx.clips, n, a.seconds, seed=a.seed)
        ctx.progress.stage(f"slowloris {n_idle} idle + {n} streams",
                           sum(s.seconds for s in scripts))
        probe.start()
        started = time.monotonic()
        try:
            outcomes, records = asyncio.run(_run(ctx, target, n_idle, scripts))
        finally:
            probe.stop()
        row = level_row(scripts, outcomes, time.monotonic() - started, probe.result(),
                        target.endpoint_s, a.wer_bound) | server_latency(target)
    finally:
        ctx.close(target)
    kinds = Counter(kind for kind, _ in records)
    cut = [t for kind, t in records if kind.startswith("handshake_timeout")]
    late = [t for kind, t in records if kind == "still open at the end"
            and t > hello_timeout + 1.0]
    row["idle_connections"] = n_idle
    row["idle_outcomes"] = dict(kinds)
    row["idle_cut_s"] = percentiles(cut) | {"max": round(max(cut), 3) if cut else None}
    cut_ok = (bool(cut) and max(cut) <= hello_timeout + 1.0 and min(cut) >= hello_timeout - 0.5
              and not late)
    p95 = row.get("p95_final_s")
    checks = [
        check(f"idle connections cut at the hello timeout ({hello_timeout:g} s)", cut_ok,
              f"{len(cut)} cut with handshake_timeout after p50 {row['idle_cut_s']['p50']} s, "
              f"max {row['idle_cut_s']['max']} s; outcomes {dict(kinds)}"),
        check(f"real streams p95 final < {a.bound:g} s",
              p95 is not None and p95 < a.bound and row["lost"] == 0
              and row["duplicated"] == 0 and row["failed"] == 0 and row["admitted"] == n,
              f"{row['admitted']}/{n} admitted, p95 {p95} s, {row['lost']} lost, "
              f"{row['duplicated']} duplicated, {row['failed']} failed"),
    ]
    return {"mode": "slowloris", "hello_timeout_s": hello_timeout, "levels": [row],
            "checks": checks}
