"""Benchmarks of the server's resilience: streams while workers are killed, and fairness
when one client floods the server.

    python -m bench.recovery kills [--streams 8] [--seconds 40] [--workers 2 --threads 1]
                                   [--kill-every 3]
    python -m bench.recovery flood [--streams 8] [--seconds 40] [--flood-seconds 1500]

`kills` runs the same real-time streams (partials on) twice on one server: undisturbed,
then while a thread SIGKILLs a worker every `--kill-every` seconds (the workers in turn,
whichever is up). It reports, per run, failed streams, `decode_failed` finals, WER against
the reference transcripts, endpoint->final latency (as in bench.streams), the median gap
between partials, and for the disturbed run the kills and how long each slot took to come
back (server log: "died" -> "ready").
`flood` runs the real-time streams alone, then again next to one client (its own process)
that sends `--flood-seconds` of speech at `--flood-rate` x real time, or as fast as the
server takes it: the real-time streams' latency shows how much one flooding client can
delay the others.
Every run starts its own `earshot-server` on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime

from bench.models_env import default_models_dir
from desktop.stream_client import StreamClient
from loadtest.client import FRAME
from loadtest.level import drive as drive_streams
from loadtest.level import level_row
from loadtest.local_server import LocalServer
from loadtest.speech import build_scripts as speech_scripts
from loadtest.speech import load_clips
from loadtest.target import Target


def build_scripts(count: int, seconds: float, seed: int = 0):
    """Dev sentences joined by pauses, a different order per stream (loadtest.speech)."""
    return speech_scripts(load_clips(), count, seconds, seed)


def start_server(*args: str) -> LocalServer:
    return LocalServer(list(args)).start()


def drive(url: str, scripts, realtime: bool, partials: bool, stagger_s: float):
    """The streams at real time (loadtest.client: frames sent when their audio is
    complete); returns (scripts, outcomes, wall seconds) for `row_of`."""
    assert realtime
    started = time.monotonic()
    outcomes = asyncio.run(drive_streams(Target(url), scripts, partials=partials,
                                         stagger_s=stagger_s))
    return scripts, outcomes, time.monotonic() - started

LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*worker (\d+) (died|ready)")


def restart_seconds(log: list[str]) -> list[float]:
    """From the server log: seconds from each worker death to its slot's next ready."""
    died: dict[str, datetime] = {}
    out = []
    for line in log:
        m = LOG_TIME.match(line)
        if not m:
            continue
        at = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
        if m.group(3) == "died":
            died.setdefault(m.group(2), at)
        elif m.group(2) in died:
            out.append((at - died.pop(m.group(2))).total_seconds())
    return out


def row_of(name: str, results, server, extra: dict | None = None) -> dict:
    """A loadtest level row (loadtest/level.py: lost, duplicated, decode_failed, WER,
    p50/p95 final latency from the endpoint's due time, ...) for one run."""
    scripts, outcomes, wall = results
    row = {"run": name} | level_row(scripts, outcomes, wall, {}, 0.6)
    row["counters"] = server.health()["counters"]
    return row | (extra or {})


def server_args(args: argparse.Namespace) -> list[str]:
    return ["--workers", str(args.workers), "--threads", str(args.threads),
            "--max-sessions", "1000"]


def cmd_kills(args: argparse.Namespace) -> list[dict]:
    server = start_server(*server_args(args))
    rows = []
    try:
        scripts = build_scripts(args.streams, args.seconds)
        calm = drive(server.url, scripts, True, True, args.stagger)
        rows.append(row_of("undisturbed", calm, server))
        kills: list[float] = []
        stop = threading.Event()

        def killer():
            turn = 0
            while not stop.wait(args.kill_every):
                pids = server.health()["worker_pids"]
                if pids:
                    os.kill(pids[turn % len(pids)], signal.SIGKILL)
                    kills.append(time.monotonic())
                    turn += 1

        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        try:
            hit = drive(server.url, scripts, True, True, args.stagger)
        finally:
            stop.set()
            thread.join(10)
        back = restart_seconds(list(server.log))  # the calm run killed nothing
        rows.append(row_of("killed", hit, server, {
            "kills": len(kills), "restarts": server.health()["worker_restarts"],
            "restart_median_s": sorted(back)[len(back) // 2] if back else None,
            "restart_max_s": max(back) if back else None}))
    finally:
        server.stop()
    for r in rows:
        print(json.dumps(r), flush=True)
    return rows


def cmd_flood(args: argparse.Namespace) -> list[dict]:
    server = start_server(*server_args(args))
    rows = []
    try:
        scripts = build_scripts(args.streams, args.seconds)
        alone = drive(server.url, scripts, True, True, args.stagger)
        rows.append(row_of("alone", alone, server))
        # the flooder runs in its own process, so it does not slow this process's clients
        flood = subprocess.Popen(
            [sys.executable, "-m", "bench.recovery", "flooder", "--url", server.url,
             "--flood-seconds", str(args.flood_seconds), "--flood-rate", str(args.flood_rate)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            time.sleep(3.0)  # its backlog builds up first
            live = drive(server.url, scripts, True, True, args.stagger)
            flooding = flood.poll() is None  # still going when the live streams ended
        finally:
            flood.kill()
            out, _ = flood.communicate()
        if not flooding:
            print("the flood ended early:", out.strip()[-500:], file=sys.stderr)
        rows.append(row_of("next to a flood", live, server, {"flood_outlasted": flooding}))
    finally:
        server.stop()
    for r in rows:
        print(json.dumps(r), flush=True)
    return rows


def cmd_flooder(args: argparse.Namespace) -> None:
    """One stream of `--flood-seconds` of speech at `--flood-rate` x real time (or as fast
    as the server takes it, if slower), partials off."""
    (script,) = build_scripts(1, args.flood_seconds, seed=99)

    async def go() -> None:
        client = StreamClient(args.url, partials=False)
        await client.connect()
        started = time.monotonic()
        for i in range(0, len(script.audio), FRAME):
            await client.send_audio(script.audio[i : i + FRAME])
            ahead = started + (i + FRAME) / 16_000 / args.flood_rate - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)
        await client.finish(timeout_s=600)

    asyncio.run(go())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=("kills", "flood", "flooder"))
    ap.add_argument("--url", help="flooder: the server")
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=40.0, help="speech per stream")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime threads per worker")
    ap.add_argument("--kill-every", type=float, default=3.0)
    ap.add_argument("--flood-seconds", type=float, default=1500.0)
    ap.add_argument("--flood-rate", type=float, default=60.0,
                    help="x real time (the server refuses more than max_realtime_factor)")
    ap.add_argument("--stagger", type=float, default=0.05, help="seconds between stream starts")
    ap.add_argument("--json", type=str)
    args = ap.parse_args()
    os.environ.setdefault("EARSHOT_MODELS_DIR", default_models_dir())
    result = {"kills": cmd_kills, "flood": cmd_flood, "flooder": cmd_flooder}[args.mode](args)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    sys.exit(main())
