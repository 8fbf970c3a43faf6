"""Run one load level (N concurrent real-time streams against a target) and turn its
outcomes into one report row.

`run_level` blocks: it runs its own asyncio loop for the streams while a server probe
samples CPU and memory in a thread. `level_row` is pure. Row keys: docs/benchmarks.md,
"Load test a box" (at least `streams`, `segments_expected`, `lost`, `duplicated`,
`p50_final_s`, `p95_final_s`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from loadtest.accounting import DEFAULT_WER_BOUND, Account, account
from loadtest.client import Outcome, run_stream, shared_sessions
from loadtest.speech import Script
from loadtest.stats import percentiles
from loadtest.target import Target


async def drive(target: Target, scripts: list[Script], *, partials: bool = True,
                stagger_s: float = 0.05, connect_timeout_s: float = 10.0,
                progress: Callable[[float], None] | None = None,
                sources: list[str] | None = None, shared: bool = False) -> list[Outcome]:
    """All streams at once (stream k starts k x `stagger_s` late); their outcomes. With
    `shared` (a herd) the clients share aiohttp sessions, one per address of `sources`
    (stream k from `sources[k % len(sources)]`), else one each as the app has."""
    sessions = shared_sessions(sources) if shared else []
    try:
        return list(await asyncio.gather(*(
            run_stream(target.url, s, token=target.token, ssl_context=target.ssl_context,
                       fingerprint=target.fingerprint, partials=partials,
                       start_delay_s=k * stagger_s, connect_timeout_s=connect_timeout_s,
                       progress=progress,
                       http=sessions[k % len(sessions)] if sessions else None)
            for k, s in enumerate(scripts))))
    finally:
        for session in sessions:
            await session.close()


def run_level(target: Target, scripts: list[Script], *, partials: bool = True,
              stagger_s: float = 0.05, connect_timeout_s: float = 10.0,
              wer_bound: float = DEFAULT_WER_BOUND,
              progress: Callable[[float], None] | None = None,
              sources: list[str] | None = None, shared: bool = False) -> dict:
    probe = target.probe()
    probe.start()
    started = time.monotonic()
    try:
        outcomes = asyncio.run(drive(target, scripts, partials=partials, stagger_s=stagger_s,
                                     connect_timeout_s=connect_timeout_s, progress=progress,
                                     sources=sources, shared=shared))
    finally:
        probe.stop()
    wall = time.monotonic() - started
    row = level_row(scripts, outcomes, wall, probe.result(), target.endpoint_s, wer_bound)
    return row | server_latency(target)


def server_latency(target: Target) -> dict:
    """The server's own view (/api/stats `final_latency`, its last <= 2000 finals:
    endpoint detected -> final decoded), to tell decode time from the rest."""
    lat = target.stats().get("final_latency") or {}
    return {"server_p50_final_s": lat.get("p50_s"), "server_p95_final_s": lat.get("p95_s")}


def outcome_account(script: Script, out: Outcome, endpoint_s: float,
                    wer_bound: float = DEFAULT_WER_BOUND) -> Account:
    return account(script.segments, out.finals, out.t0, endpoint_s, out.partials, wer_bound)


def level_row(scripts: list[Script], outcomes: list[Outcome], wall_s: float, probe: dict,
              endpoint_s: float, wer_bound: float = DEFAULT_WER_BOUND) -> dict:
    """One report row. Only admitted streams (those that got `ready`) are accounted: a
    refused one expected nothing; an admitted stream that failed mid-way keeps what it
    received, so its missing segments count as lost. `failed`: streams that failed in
    any other way than a 503/429 refusal, before or after `ready`."""
    total = Account()
    admitted = [(s, o) for s, o in zip(scripts, outcomes, strict=True)
                if o.connect_s is not None]
    for script, out in admitted:
        total = total.add(outcome_account(script, out, endpoint_s, wer_bound))
    refused = [o for o in outcomes if o.status == "refused"]
    limited = [o for o in outcomes if o.status == "rate_limited"]
    failed = [o for o in outcomes if o.status in ("failed", "unauthorized")]
    audio = sum(s.seconds for s, _ in admitted)
    lags = [x for _, o in admitted for x in o.lags]
    refusal_times = [o.refused_s for o in refused + limited if o.refused_s is not None]
    cpu = probe.get("server_cpu_cores")
    row = {
        "streams": len(scripts), "admitted": len(admitted), "refused_503": len(refused),
        "refused_after_hello": sum(o.refused_after_hello for o in refused),
        "rate_limited_429": len(limited), "failed": len(failed),
        "errors": sorted({o.error for o in failed if o.error})[:5],
        "reconnects": sum(o.reconnects for _, o in admitted),
        "segments_expected": total.expected, "finals_received": total.received,
        "lost": total.lost, "duplicated": total.duplicated, "out_of_order": total.out_of_order,
        "unexpected": total.unexpected, "decode_failed": total.decode_failed,
        "over_wer": total.over_wer, "wer_bound": wer_bound,
        "wer": None if total.wer is None else round(total.wer, 4),
    }
    for name, values in (("final", total.final_s), ("final_from_speech", total.final_from_speech_s),
                         ("first_partial", total.first_partial_s)):
        for q, v in percentiles(values).items():
            row[f"{q}_{name}_s"] = v
    row["latency_samples"] = len(total.final_s)
    row |= {
        "refusal_max_s": round(max(refusal_times), 3) if refusal_times else None,
        "refusal_p95_s": percentiles(refusal_times)["p95"],
        "audio_s": round(audio, 1), "wall_s": round(wall_s, 1),
        "throughput_x": round(audio / wall_s, 2) if wall_s > 0 else None,
        "rtf": round(cpu * wall_s / audio, 4) if cpu is not None and audio else None,
        "send_lag_p95_s": percentiles(lags)["p95"],
    }
    return row | probe
