"""Capacity of one server: the most real-time streams whose p95 final latency stays under
the bound, found by stepping through `earshot loadtest sweep` levels on that server.

`run_streams(url, server, clips, n, seconds, seed)` runs one level (loadtest's
`run_level`: n real-time streams of dev speech, partials on) and returns its row; a level
holds by loadtest's own rule (`loadtest.modes.sweep.holds`: p95 final < bound, nothing
lost, duplicated, failed or refused). `search(...)` starts at `start` streams and gallops by
`max(1, start // 8)`, doubling the step, up while levels hold or down while they break,
then bisects between the largest level that held and the smallest that broke down to the
sweep's resolution (a gap of max(1, N // 8)), at most `max_levels` levels; the capacity
is the largest level that held (0 when even 1 stream broke; `bounded` when the levels ran
out first, and then None if no level held: unknown, below the smallest level run).
Level n's streams use seed + 100 n, so both cases of a repeat get the same speech at the
same level. Levels run one after another on the same server, each once it holds no
session. Blocking; main thread.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from loadtest.level import run_level
from loadtest.local_server import LocalServer
from loadtest.modes.sweep import holds, wait_idle
from loadtest.speech import Clip, build_scripts
from loadtest.target import Target

ROW_KEYS = ("streams", "admitted", "refused_503", "rate_limited_429", "failed",
            "segments_expected", "lost", "duplicated", "out_of_order", "decode_failed",
            "wer", "p50_final_s", "p95_final_s", "p99_final_s", "server_p95_final_s",
            "send_lag_p95_s", "throughput_x", "wall_s", "errors")


def run_streams(server: LocalServer, clips: list[Clip], n: int, seconds: float, seed: int,
                wer_bound: float = 0.5) -> dict:
    """One level: `n` real-time streams (seed: utterance order) against `server`; the
    level row trimmed to ROW_KEYS."""
    wait_idle(server, timeout_s=60.0, poll_s=0.2)
    target = Target(server.url, server=server)
    scripts = build_scripts(clips, n, seconds, seed=seed)
    row = run_level(target, scripts, partials=True, stagger_s=0.05, wer_bound=wer_bound)
    return {k: row.get(k) for k in ROW_KEYS}


@dataclass
class Search:
    capacity: int | None = 0
    levels: list[dict] = field(default_factory=list)  # each row, with "holds"
    bounded: bool = False  # ran out of levels before the capacity was pinned down

    @property
    def at_capacity(self) -> dict | None:
        return next((r for r in self.levels if r["streams"] == self.capacity), None)


def next_level(n: int, step: int, good: int | None, bad: int | None) -> int | None:
    """The level to run after `n` (None: the capacity is pinned down): up by `step` while
    every level held, down while every level broke, then halving the gap between the
    largest level that held (`good`) and the smallest that broke (`bad`) until it is at
    most max(1, good // 8), the resolution of `loadtest sweep`."""
    if bad == 1:
        return None  # even one stream broke: capacity 0
    if good is None:
        return max(1, n - step)
    if bad is None:
        return n + step
    if bad - good <= max(1, good // 8):
        return None
    return (good + bad) // 2


def search(server: LocalServer, clips: list[Clip], start: int, seconds: float, seed: int,
           bound: float = 1.0, max_levels: int = 5, log=print) -> Search:
    step = max(1, start // 8)
    out = Search()
    good: int | None = None
    bad: int | None = None
    n: int | None = max(1, start)
    while n is not None:
        if len(out.levels) >= max_levels:
            out.bounded = True
            break
        began = time.monotonic()
        row = run_streams(server, clips, n, seconds, seed + 100 * n)
        row["holds"] = holds(row, bound)
        out.levels.append(row)
        if row["holds"]:
            good = n if good is None else max(good, n)
        else:
            bad = n if bad is None else min(bad, n)
        log(f"    {n:>3} streams: p95 final {_ms(row['p95_final_s'])}, lost {row['lost']}, "
            f"dup {row['duplicated']}, refused {row['refused_503']} -> "
            f"{'holds' if row['holds'] else 'breaks'} ({time.monotonic() - began:.0f} s)")
        n = next_level(n, step, good, bad)
        step *= 2
    out.capacity = good if good is not None else (None if out.bounded else 0)
    return out


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v * 1000:.0f} ms"
