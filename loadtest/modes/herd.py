"""`herd`: `--streams` clients (default 2000) connect at the same moment.

Checks: the server is still up afterwards and its peak memory stayed under
`--memory-bound-mb`; every client it does not admit is refused with HTTP 503 (or, when its
upgrade raced others past the check, `overloaded` + close 4503 right after its hello)
within `--refusal-bound` (1 s) of trying (a 429 or a slower refusal fails this); no more
are admitted than max_sessions (local server); every admitted
client streams `--seconds` of speech and gets its full transcript (no failed stream, no
lost or duplicated segment). With `--server local` the server has its default
max_sessions (64) unless --max-sessions, and the clients come from 127.0.0.2, .3, ...
(250 per address, as an office's hosts would; `--sources` elsewhere), sharing one
aiohttp session per address (a light load generator). Streams share
min(N, 32) scripts (memory). First, the same N clients are refused by a bare 503
responder (loadtest/floor.py): the load generator's own floor on this machine, reported
next to the server's figures.
"""

from __future__ import annotations

from loadtest.context import Context
from loadtest.floor import refusal_floor
from loadtest.level import run_level
from loadtest.modes import check
from loadtest.modes.slowloris import client_sources
from loadtest.speech import build_scripts

DEFAULT_STREAMS = 2000
LOCAL_MAX_SESSIONS = 64  # the server's default max_sessions


def run(ctx: Context) -> dict:
    a = ctx.args
    n = a.streams or DEFAULT_STREAMS
    sources = client_sources(ctx, n)
    floor = refusal_floor(n, sources)
    target = ctx.open()
    try:
        pool = build_scripts(ctx.clips, min(n, 32), a.seconds, seed=a.seed)
        scripts = [pool[k % len(pool)] for k in range(n)]
        ctx.progress.stage(f"herd {n} clients", min(n, 64) * pool[0].seconds)
        row = run_level(target, scripts, partials=not a.no_partials, stagger_s=0.0,
                        wer_bound=a.wer_bound, progress=ctx.progress.update, sources=sources,
                        shared=True)
        health = target.health()
        alive = bool(health) and (target.server is None or target.server.alive())
    finally:
        ctx.close(target)
    refused = row["refused_503"]
    beyond = n - row["admitted"]
    capacity = (a.max_sessions or LOCAL_MAX_SESSIONS) if ctx.local else None
    row["capacity"] = capacity
    row["sources"] = len(sources or [None])
    row["refusal_floor_s"] = floor
    peak = row.get("server_peak_rss_mb")
    checks = [
        check("server stays up", alive, f"/healthz after the herd: {health.get('status', 'none')}"),
        check("bounded memory", peak is None or peak <= a.memory_bound_mb,
              f"server peak RSS {peak if peak is not None else 'n/a'} MB "
              f"(bound {a.memory_bound_mb:g} MB)"),
        check(f"503 within {a.refusal_bound:g} s beyond capacity",
              refused == beyond and (row["refusal_max_s"] or 0) <= a.refusal_bound,
              f"{row['admitted']} admitted, {refused} refused with 503 "
              f"({row['refused_after_hello']} of them as 4503 right after their hello; "
              f"slowest {row['refusal_max_s']} s), {row['rate_limited_429']} with 429; "
              f"this machine's floor (the same clients against a bare 503 responder): "
              f"slowest {floor['max']} s"),
        check("no more admitted than the capacity",
              capacity is None or row["admitted"] <= capacity,
              f"{row['admitted']} admitted, max_sessions "
              f"{capacity if capacity is not None else 'unknown (remote)'}"),
        check("admitted sessions complete",
              row["failed"] == 0 and row["lost"] == 0 and row["duplicated"] == 0
              and row["admitted"] > 0,
              f"{row['admitted']} admitted: {row['failed']} failed, "
              f"{row['segments_expected']} segments, {row['lost']} lost, "
              f"{row['duplicated']} duplicated, WER {row['wer']}"),
    ]
    return {"mode": "herd", "levels": [row], "checks": checks}
