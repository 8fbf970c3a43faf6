"""`sweep`: raise the number of concurrent real-time streams until the latency bound
breaks; the largest N that holds.

A level holds when, over `--repeats` runs, the median of the runs' p95 final latency
(endpoint due -> final) is below `--bound` and no run lost, duplicated or failed a
segment or had a stream refused. Levels: `--levels a,b,c` as given, else from
`--streams` (default 2) doubling until a level breaks (or `--max-streams`), then halving
the gap between the last level that held and the first that broke until it is under
1/8 of N. With `--server local` each run gets a fresh server (max_sessions 1000 unless
--max-sessions), so runs are independent; a remote server is waited for until it holds
no session between runs.
"""

from __future__ import annotations

import time

from loadtest.context import Context
from loadtest.level import run_level
from loadtest.modes import check
from loadtest.report import combine_repeats
from loadtest.speech import build_scripts

DEFAULT_STREAMS = 2


def holds(level: dict, bound: float) -> bool:
    p95 = level.get("p95_final_s")
    return (p95 is not None and p95 < bound and level["lost"] == 0
            and level["duplicated"] == 0 and level["failed"] == 0
            and level["refused_503"] == 0 and level["rate_limited_429"] == 0)


def measure(ctx: Context, n: int) -> dict:
    a = ctx.args
    runs = []
    for r in range(a.repeats):
        target = ctx.open(max_sessions=1000)
        try:
            if target.server is None:
                wait_idle(target)
            scripts = build_scripts(ctx.clips, n, a.seconds, seed=a.seed + 1000 * r)
            ctx.progress.stage(f"sweep {n} streams, run {r + 1}/{a.repeats}",
                               sum(s.seconds for s in scripts))
            runs.append(run_level(target, scripts, partials=not a.no_partials,
                                  stagger_s=a.stagger, wer_bound=a.wer_bound,
                                  progress=ctx.progress.update))
        finally:
            ctx.close(target)
    level = combine_repeats(runs)
    level["holds"] = holds(level, a.bound)
    return level


def wait_idle(target, timeout_s: float = 120.0, poll_s: float = 1.0) -> None:
    """Until the server (anything with `.health()`) holds no session: the previous level's
    streams have ended. Returns after `timeout_s` regardless."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        sessions = target.health().get("sessions")
        active = sessions.get("active") if isinstance(sessions, dict) else sessions
        if not active:
            return
        time.sleep(poll_s)


def run(ctx: Context) -> dict:
    a = ctx.args
    levels: dict[int, dict] = {}
    if a.levels:
        for n in sorted({int(x) for x in a.levels.split(",")}):
            levels[n] = measure(ctx, n)
    else:
        n, good, bad = max(1, a.streams or DEFAULT_STREAMS), None, None
        while n not in levels:
            levels[n] = measure(ctx, n)
            if levels[n]["holds"]:
                good = n
            else:
                bad = n if bad is None else min(bad, n)
            if bad is None:
                n = min(n * 2, a.max_streams)
            elif good is None or bad - good <= max(1, good // 8):
                break
            else:
                n = (good + bad) // 2
    rows = [levels[n] for n in sorted(levels)]
    held = [r["streams"] for r in rows if r["holds"]]
    best = max(held) if held else None
    best_row = levels[best] if best is not None else None
    spread = best_row["spread"]["p95_final_s"] if best_row else None
    detail = (f"largest N holding p95 final < {a.bound:g} s: {best} streams "
              f"(p95 median {spread['median']:.3f} s, min-max {spread['min']:.3f}-"
              f"{spread['max']:.3f} s over {spread['n']} runs)" if best_row
              else f"no level held p95 final < {a.bound:g} s")
    return {"mode": "sweep", "bound_s": a.bound, "largest_streams": best, "levels": rows,
            "checks": [check("a level holds the bound", best is not None, detail)]}
