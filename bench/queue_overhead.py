"""The Redis queue's cost and its recovery, on one machine, in one run (issue 15).

    python -m bench.queue_overhead [--quick] [--repeats 3] [--workers 2] [--threads 1]
        [--batch 16] [--model moonshine-tiny-en] [--phases capacity,throughput,recovery]
        [--json PATH] ...          (--help lists every setting)

Three phases, each repeated `--repeats` times with its cases interleaved per repeat (the
order alternates: A B, B A, A B, ...) so that drift on the machine hits every case:
1. capacity: the most real-time streams (dev speech, partials on; loadtest's streams and
   its `sweep` rule: p95 final latency < `--bound`, nothing lost, duplicated, failed or
   refused) for `inproc` (`earshot-server --workers W`) and `redis` (`redis-server`, W
   `earshot-worker`s and `earshot-server --queue`; same model, threads and batch). A fresh
   server per case and repeat; levels searched from `--start-streams` (later repeats:
   the median capacity so far) in steps of N/8 (bench/queue_capacity.py). Prints median
   and min-max per case and the ratio redis/inproc.
2. throughput: audio seconds decoded per wall second with 1 and with W Redis workers, for a
   saturating backlog: the 18 dev sentences x `--upload-copies` posted to the server's
   OpenAI endpoint `--upload-concurrency` at a time (same scheduler and workers as
   streams; no real-time pacing, no partials, so the decoders set the pace; streams above
   capacity would measure the talkers' pace and the partials shed, not the workers).
   Ratio W/1 (bench/queue_throughput.py).
3. recovery: W >= 2 Redis workers, `--chaos-fraction` (0.7) of the median Redis capacity
   in streams (or `--chaos-streams`), undisturbed vs one worker SIGKILLed every
   `--kill-every` s (restarted 0.1 s later, as systemd would). Per kill, the time until
   every task the killed worker held had been claimed and finished by another worker (Redis's
   pending list; bench/queue_recovery.py), p95 final latency under chaos vs undisturbed,
   lost and duplicated finals (must be 0), the gateway's dropped duplicates and dead
   letters.
Exit status 1 when a final was lost or duplicated, an upload failed or a kill's tasks were
never recovered; 2 when the run could not be made (no redis-server, a server that does
not start). Needs redis-server on PATH. Never imports tests/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.models_env import default_models_dir
from bench.queue_capacity import run_streams, search
from bench.queue_recovery import Killer
from bench.queue_stack import RedisMissing, Setup, start_inproc, start_redis
from bench.queue_throughput import measure, upload_set
from loadtest.local_server import ServerStartError
from loadtest.speech import load_clips
from loadtest.stats import spread

PHASES = ("capacity", "throughput", "recovery")
QUICK = {"repeats": 1, "seconds": 8.0, "max_levels": 3, "upload_copies": 1,
         "chaos_seconds": 12.0, "kill_every": 4.0}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.queue_overhead",
                                description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run (about 3 minutes): "
                   + ", ".join(f"--{k.replace('_', '-')} {v:g}" for k, v in QUICK.items())
                   + " unless given")
    p.add_argument("--phases", default=",".join(PHASES),
                   help="comma-separated subset of " + ",".join(PHASES) + " (default all)")
    p.add_argument("--repeats", type=int, default=3, help="repeats of every case (3)")
    g = p.add_argument_group("every case")
    g.add_argument("--workers", type=int, default=2, help="W: worker processes (2)")
    g.add_argument("--threads", type=int, default=1, help="onnxruntime threads per worker (1)")
    g.add_argument("--batch", type=int, default=16,
                   help="server --max-batch and earshot-worker --batch (16)")
    g.add_argument("--model", default="moonshine-tiny-en")
    g = p.add_argument_group("capacity")
    g.add_argument("--seconds", type=float, default=15.0,
                   help="speech per stream at each level (15: utterances are added until "
                   "a stream holds at least this much, so a level takes about 20-25 s)")
    g.add_argument("--start-streams", type=int, default=8, help="first level searched (8)")
    g.add_argument("--max-levels", type=int, default=5,
                   help="most levels per search (5; then the largest that held)")
    g.add_argument("--bound", type=float, default=1.0, help="p95 final latency bound (1.0 s)")
    g = p.add_argument_group("throughput")
    g.add_argument("--upload-copies", type=int, default=3,
                   help="copies of the 18 dev sentences uploaded (3: 260 s of audio)")
    g.add_argument("--upload-concurrency", type=int, default=16,
                   help="uploads in flight (16; the server's max_clip_jobs is set to it)")
    g = p.add_argument_group("recovery")
    g.add_argument("--chaos-seconds", type=float, default=25.0,
                   help="speech per stream (25)")
    g.add_argument("--kill-every", type=float, default=5.0, help="seconds between kills (5)")
    g.add_argument("--chaos-fraction", type=float, default=0.7,
                   help="streams as a fraction of the median Redis capacity (0.7)")
    g.add_argument("--chaos-streams", type=int,
                   help="streams (default: the fraction of the median Redis capacity, else "
                   "of the in-process one; without the capacity phase, of --start-streams)")
    p.add_argument("--json", type=Path, help="write every figure and raw row as JSON")
    return p


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = build_parser()
    first, _ = p.parse_known_args(argv)
    if first.quick:
        p.set_defaults(**QUICK)
    a = p.parse_args(argv)
    a.phases = [x.strip() for x in a.phases.split(",") if x.strip()]
    bad = [x for x in a.phases if x not in PHASES]
    if bad:
        p.error(f"--phases: unknown {', '.join(bad)} (choose from {', '.join(PHASES)})")
    for name in ("repeats", "workers", "threads", "batch", "start_streams", "max_levels",
                 "upload_copies", "upload_concurrency"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("seconds", "bound", "chaos_seconds", "kill_every", "chaos_fraction"):
        if getattr(a, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if "recovery" in a.phases and a.workers < 2:
        p.error("the recovery phase needs --workers 2 or more (one must be left to claim)")
    return a


def log(msg: str) -> None:
    print(msg, flush=True)


def machine() -> dict:
    redis = subprocess.run(["redis-server", "--version"], capture_output=True, text=True,
                           check=False).stdout.strip() if _has_redis() else None
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text()
                .splitlines() if ln.startswith("model name")), platform.processor()) \
        if Path("/proc/cpuinfo").exists() else platform.processor()
    return {"cores": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "redis": redis, "load_average_start": os.getloadavg()}


def _has_redis() -> bool:
    import shutil

    return shutil.which("redis-server") is not None


def fmt_spread(s: dict, unit: str = "", scale: float = 1.0, digits: int = 2) -> str:
    if not s or s.get("n", 0) == 0:
        return "n/a"
    f = f"{{:.{digits}f}}"
    med, lo, hi = (f.format(s[k] * scale) for k in ("median", "min", "max"))
    return f"{med}{unit} ({lo}-{hi})"


# ---- phases ----------------------------------------------------------------------------
def capacity_phase(a: argparse.Namespace, setup: Setup, clips) -> dict:
    cases = {"inproc": start_inproc, "redis": start_redis}
    runs: dict[str, list[dict]] = {c: [] for c in cases}
    start = a.start_streams
    for r in range(a.repeats):
        order = list(cases) if r % 2 == 0 else list(reversed(cases))
        for case in order:
            log(f"capacity, repeat {r + 1}/{a.repeats}: {case} (W={a.workers}), from "
                f"{start} streams")
            began = time.monotonic()
            stack = cases[case](setup, a.workers)
            log(f"  (started in {time.monotonic() - began:.1f} s)")
            try:
                found = search(stack.server, clips, start, a.seconds, seed=100_000 * r,
                               bound=a.bound, max_levels=a.max_levels, log=log)
            finally:
                stack.stop()
            at = found.at_capacity or {}
            runs[case].append({"repeat": r, "capacity": found.capacity,
                               "bounded": found.bounded,
                               "p95_at_capacity_s": at.get("p95_final_s"),
                               "levels": found.levels})
            log(f"  -> {case}: {found.capacity} streams"
                + (" (search ran out of levels)" if found.bounded else ""))
        caps = [x["capacity"] for c in cases for x in runs[c] if x["capacity"] is not None]
        if caps:
            start = max(1, round(statistics.median(caps)))
    ratios = [rd["capacity"] / ip["capacity"] for ip, rd in zip(runs["inproc"], runs["redis"],
                                                                strict=True)
              if ip["capacity"] and rd["capacity"] is not None]
    out = {"cases": {}, "runs": runs}
    for case in cases:
        out["cases"][case] = {
            "capacity": spread([x["capacity"] for x in runs[case]]),
            "p95_at_capacity_s": spread([x["p95_at_capacity_s"] for x in runs[case]]),
            "per_repeat": [x["capacity"] for x in runs[case]]}
    med_ip = out["cases"]["inproc"]["capacity"]["median"]
    med_rd = out["cases"]["redis"]["capacity"]["median"]
    out["ratio_of_medians"] = round(med_rd / med_ip, 3) if med_ip and med_rd is not None \
        else None
    out["ratio_per_repeat"] = spread(ratios)
    return out


def throughput_phase(a: argparse.Namespace, setup: Setup) -> dict:
    files = upload_set(a.upload_copies)
    counts = [1, a.workers] if a.workers > 1 else [1]
    runs: dict[int, list[dict]] = {w: [] for w in counts}
    for r in range(a.repeats):
        for w in (counts if r % 2 == 0 else list(reversed(counts))):
            log(f"throughput, repeat {r + 1}/{a.repeats}: redis, {w} worker(s), "
                f"{len(files)} uploads, {a.upload_concurrency} at a time")
            stack = start_redis(setup, w, settings={"max_clip_jobs": a.upload_concurrency})
            try:
                row = measure(stack.url, files, a.upload_concurrency)
            finally:
                stack.stop()
            row["repeat"] = r
            runs[w].append(row)
            log(f"  -> {row['throughput_x']}x real time ({row['audio_s']} s audio in "
                f"{row['wall_s']} s), failed {row['failed']}, WER {row['wer']}")
    out: dict = {"cases": {}, "runs": {str(w): v for w, v in runs.items()},
                 "files": len(files), "audio_s": round(sum(f.audio_s for f in files), 1)}
    for w in counts:
        out["cases"][str(w)] = {"throughput_x": spread([x["throughput_x"] for x in runs[w]])}
    if len(counts) > 1:
        per = [b["throughput_x"] / one["throughput_x"] for one, b in
               zip(runs[1], runs[a.workers], strict=True) if one["throughput_x"]]
        m1 = out["cases"]["1"]["throughput_x"]["median"]
        mw = out["cases"][str(a.workers)]["throughput_x"]["median"]
        out["ratio_of_medians"] = round(mw / m1, 3) if m1 else None
        out["ratio_per_repeat"] = spread(per)
    return out


def recovery_phase(a: argparse.Namespace, setup: Setup, clips, streams: int) -> dict:
    from edge_server.queue.streams import task_stream

    runs: dict[str, list[dict]] = {"undisturbed": [], "chaos": []}
    task_streams = [task_stream(a.model, True), task_stream(a.model, False)]
    for r in range(a.repeats):
        order = ["undisturbed", "chaos"] if r % 2 == 0 else ["chaos", "undisturbed"]
        for case in order:
            log(f"recovery, repeat {r + 1}/{a.repeats}: {case}, {streams} streams x "
                f"{a.chaos_seconds:g} s, W={a.workers}"
                + (f", SIGKILL every {a.kill_every:g} s" if case == "chaos" else ""))
            stack = start_redis(setup, a.workers)
            killer = client = None
            try:
                since = time.monotonic()
                if case == "chaos":
                    assert stack.redis is not None and stack.workers is not None
                    client = stack.redis.client()
                    killer = Killer(stack.workers, client, task_streams, a.kill_every).start()
                try:
                    row = run_streams(stack.server, clips, streams, a.chaos_seconds,
                                      seed=500_000 + 1000 * r)
                finally:
                    kills = killer.stop() if killer is not None else []
                    if client is not None:
                        client.close()
                queue = stack.server.health().get("queue") or {}
                row["duplicates_dropped"] = queue.get("duplicates_dropped")
                row["dead_letters"] = queue.get("dead_letters")
                if stack.workers is not None:
                    row["claim_lines"] = stack.workers.claim_lines(since)
            finally:
                stack.stop()
            for k in kills:
                k["at"] = round(k["at"] - since, 3)
            row["kills"] = kills
            row["repeat"] = r
            runs[case].append(row)
            rec = [k["recovered_s"] for k in kills if k["recovered_s"] is not None]
            log(f"  -> p95 final {row['p95_final_s']}, lost {row['lost']}, dup "
                f"{row['duplicated']}, kills {len(kills)} (holding tasks "
                f"{sum(1 for k in kills if k['held'])}), recovered in {rec}")
    kills = [k for x in runs["chaos"] for k in x["kills"]]
    held = [k for k in kills if k["held"]]
    every = [x for c in runs.values() for x in c]
    out = {
        "streams": streams, "runs": runs,
        "p95_final_s": {c: spread([x["p95_final_s"] for x in runs[c]]) for c in runs},
        "p50_final_s": {c: spread([x["p50_final_s"] for x in runs[c]]) for c in runs},
        "kills": len(kills), "kills_holding_tasks": len(held),
        "kills_holding_finals": sum(1 for k in held if k["held_finals"]),
        "tasks_held": spread([k["held"] for k in held]),
        "claimed_s": spread([k["claimed_s"] for k in held]),
        "recovered_s": spread([k["recovered_s"] for k in held]),
        "unrecovered_kills": sum(1 for k in held if k["recovered_s"] is None),
        "claim_queued_s": spread([c["queued_s"] for x in runs["chaos"]
                                  for c in x.get("claim_lines", [])]),
    }
    for key in ("lost", "duplicated", "failed", "decode_failed", "out_of_order",
                "refused_503", "segments_expected"):
        out[key] = {c: sum(x.get(key) or 0 for x in runs[c]) for c in runs}
    out["duplicates_dropped"] = sum(x.get("duplicates_dropped") or 0 for x in every)
    out["dead_letters"] = sum(x.get("dead_letters") or 0 for x in every)
    und = out["p95_final_s"]["undisturbed"]["median"]
    cha = out["p95_final_s"]["chaos"]["median"]
    out["p95_ratio_chaos_undisturbed"] = round(cha / und, 3) if und and cha else None
    return out


def chaos_streams(a: argparse.Namespace, capacity: dict | None) -> int:
    """--chaos-fraction of the median Redis capacity (else of the in-process one, when
    no Redis search found any; else of --start-streams), at least 1."""
    base = None
    for case in ("redis", "inproc"):
        if capacity and (med := capacity["cases"][case]["capacity"]["median"]):
            base = med
            break
    return max(1, round(a.chaos_fraction * (base or a.start_streams)))


# ---- report ----------------------------------------------------------------------------
def report(a: argparse.Namespace, results: dict) -> list[str]:
    lines = ["", f"Redis queue benchmark: {a.repeats} repeat(s), W={a.workers}, threads "
             f"{a.threads}, batch {a.batch}, {a.model}; median (min-max) over repeats"]
    cap = results.get("capacity")
    if cap:
        lines += ["", f"capacity: streams with p95 final < {a.bound:g} s "
                  f"({a.seconds:g} s of speech per stream and level)",
                  f"{'case':<28}{'capacity':>20}{'per repeat':>18}{'p95 at capacity':>26}"]
        for case, label in (("inproc", f"in-process --workers {a.workers}"),
                            ("redis", f"Redis, {a.workers} earshot-worker")):
            c = cap["cases"][case]
            lines.append(f"{label:<28}{fmt_spread(c['capacity'], digits=0):>20}"
                         f"{c['per_repeat']!s:>18}"
                         f"{fmt_spread(c['p95_at_capacity_s'], ' ms', 1000, 0):>26}")
        lines.append(f"ratio Redis/in-process: {cap['ratio_of_medians']} (of the medians); "
                     f"per repeat {fmt_spread(cap['ratio_per_repeat'])}")
    thr = results.get("throughput")
    if thr:
        lines += ["", f"throughput: {thr['files']} uploads ({thr['audio_s']} s of audio), "
                  f"{a.upload_concurrency} at a time; audio seconds per wall second"]
        for w, c in thr["cases"].items():
            lines.append(f"  Redis, {w} earshot-worker: {fmt_spread(c['throughput_x'], 'x', 1, 1)}")
        if "ratio_of_medians" in thr:
            lines.append(f"ratio {a.workers}/1: {thr['ratio_of_medians']} (of the medians); "
                         f"per repeat {fmt_spread(thr['ratio_per_repeat'])}")
    rec = results.get("recovery")
    if rec:
        p95 = rec["p95_final_s"]
        lines += ["", f"recovery: {rec['streams']} streams x {a.chaos_seconds:g} s, "
                  f"W={a.workers} Redis workers, one SIGKILLed every {a.kill_every:g} s",
                  f"  p95 final undisturbed {fmt_spread(p95['undisturbed'], ' ms', 1000, 0)}"
                  f", under kills {fmt_spread(p95['chaos'], ' ms', 1000, 0)}; ratio "
                  f"{rec['p95_ratio_chaos_undisturbed']}",
                  f"  kills {rec['kills']} ({rec['kills_holding_tasks']} holding tasks, "
                  f"{rec['kills_holding_finals']} of them a final; tasks held "
                  f"{fmt_spread(rec['tasks_held'], digits=0)})",
                  f"  kill -> tasks claimed by another worker "
                  f"{fmt_spread(rec['claimed_s'], ' s')}; kill -> all finished "
                  f"{fmt_spread(rec['recovered_s'], ' s')}; never finished: "
                  f"{rec['unrecovered_kills']}",
                  f"  claimed tasks' age when claimed (workers' log) "
                  f"{fmt_spread(rec['claim_queued_s'], ' s')}",
                  f"  segments {rec['segments_expected']}; lost {rec['lost']}, duplicated "
                  f"{rec['duplicated']}, failed streams {rec['failed']}, decode_failed "
                  f"{rec['decode_failed']}; gateway dropped duplicates "
                  f"{rec['duplicates_dropped']}, dead letters {rec['dead_letters']}"]
    return lines


def problems(results: dict) -> list[str]:
    out = []
    for phase in ("capacity",):
        for case, runs in (results.get(phase) or {}).get("runs", {}).items():
            for run in runs:
                for lv in run["levels"]:
                    if lv["lost"] or lv["duplicated"]:
                        out.append(f"capacity {case}: {lv['streams']} streams lost "
                                   f"{lv['lost']}, duplicated {lv['duplicated']}")
    for w, runs in (results.get("throughput") or {}).get("runs", {}).items():
        if any(r["failed"] for r in runs):
            out.append(f"throughput {w} worker(s): failed uploads")
    rec = results.get("recovery")
    if rec:
        for case in ("undisturbed", "chaos"):
            if rec["lost"][case] or rec["duplicated"][case] or rec["failed"][case]:
                out.append(f"recovery {case}: lost {rec['lost'][case]}, duplicated "
                           f"{rec['duplicated'][case]}, failed {rec['failed'][case]}")
        if rec["unrecovered_kills"]:
            out.append(f"recovery: {rec['unrecovered_kills']} kill(s) whose tasks were "
                       "never finished")
    return out


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               EARSHOT_MODELS_DIR=os.environ.get("EARSHOT_MODELS_DIR") or default_models_dir())
    os.environ["EARSHOT_MODELS_DIR"] = env["EARSHOT_MODELS_DIR"]
    setup = Setup(a.model, a.threads, a.batch, env, {"max_sessions": 1000})
    info = {"command": "python -m bench.queue_overhead " + " ".join(sys.argv[1:]
                                                                     if argv is None else argv),
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
            "machine": machine(), "models_dir": env["EARSHOT_MODELS_DIR"]}
    log(f"{info['command']}\nmachine: {info['machine']}")
    clips = load_clips()
    results: dict = {}
    began = time.monotonic()
    try:
        for phase in a.phases:
            t0 = time.monotonic()
            if phase == "capacity":
                results[phase] = capacity_phase(a, setup, clips)
            elif phase == "throughput":
                results[phase] = throughput_phase(a, setup)
            else:
                streams = a.chaos_streams or chaos_streams(a, results.get("capacity"))
                results[phase] = recovery_phase(a, setup, clips, streams)
            results[phase]["elapsed_s"] = round(time.monotonic() - t0, 1)
    except (RedisMissing, ServerStartError, RuntimeError) as exc:
        print(f"bench.queue_overhead: error: {exc}", file=sys.stderr)
        return 2
    info["elapsed_s"] = round(time.monotonic() - began, 1)
    info["machine"]["load_average_end"] = os.getloadavg()
    lines = report(a, results)
    bad = problems(results)
    lines += [""] + ([f"PROBLEM: {b}" for b in bad] or ["no final lost or duplicated, no "
                                                        "upload failed, every kill recovered"])
    lines.append(f"elapsed {info['elapsed_s']} s; load average at start "
                 f"{info['machine']['load_average_start']}, at end "
                 f"{info['machine']['load_average_end']}")
    log("\n".join(lines))
    if a.json:
        a.json.write_text(json.dumps(info | {"results": results}, indent=2, default=str) + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
