"""Load benchmark of the edge server with real-time streams of continuous speech.

    python -m bench.streams sweep --streams 8,16,24,32 [--seconds 45] [--workers 1 --threads 2]
    python -m bench.streams single
    python -m bench.streams saturate [--streams 24]
    python -m bench.streams gateway [--streams 500]

Each run starts its own `earshot-server` on 127.0.0.1 (port 0) and drives it from this
process with the project's StreamClient: dev sentences joined by natural pauses (0.6-1.6 s),
a different order per stream, 100 ms PCM16 frames paced at real time.

Latency of a final is measured from the moment its endpoint was due (speech end plus the
configured endpoint silence, both in stream time mapped to wall time) to the final's arrival:
the time the system adds beyond the silence it must wait for by design. The time from the end
of speech is that plus the endpoint silence (600 ms by default); both are printed.
`saturate` sends as fast as the server takes the audio (partials off) and compares the audio
seconds finalized per wall second with the raw engine throughput on the same segments,
measured first in this process with the same thread count. `gateway` uses --noop-engine (no
ASR, energy VAD) and reports the server process's CPU use (Linux /proc).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.models_env import default_models_dir
from desktop.stream_client import StreamClient, StreamError
from edge_server.audio import read_audio
from edge_server.evaluation import word_error_rate
from tests.conftest import DEV, SENTENCE_SETS, dev_rows
from tests.server_harness import start_server

FRAME = 1600
ENDPOINT_S = 0.6
POST_ROLL_S = 0.2


@dataclass
class Script:
    audio: np.ndarray
    reference: str


@dataclass
class StreamResult:
    finals: list = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    partial_gaps: list[float] = field(default_factory=list)
    error: str | None = None
    hypothesis: str = ""
    reference: str = ""


def build_scripts(count: int, seconds: float, seed: int = 0) -> list[Script]:
    rows = dev_rows(SENTENCE_SETS)
    clips = [(read_audio(DEV / r["path"]), r["transcript"]) for r in rows]
    scripts = []
    for s in range(count):
        rng = random.Random(seed + s)
        order = list(range(len(clips)))
        rng.shuffle(order)
        parts = [np.zeros(int(0.5 * 16000), np.float32)]
        words, total, i = [], 0.5, 0
        while total < seconds:
            audio, text = clips[order[i % len(order)]]
            pause = np.zeros(int(rng.uniform(0.6, 1.6) * 16000), np.float32)
            parts += [audio, pause]
            words.append(text)
            total += (len(audio) + len(pause)) / 16000
            i += 1
        scripts.append(Script(np.concatenate(parts), " ".join(words)))
    return scripts


async def run_stream(url: str, script: Script, realtime: bool, partials: bool,
                     start_delay: float) -> StreamResult:
    await asyncio.sleep(start_delay)
    result = StreamResult(reference=script.reference)
    partial_times: list[float] = []
    final_events: list[tuple[float, dict]] = []

    def on_event(e: dict) -> None:
        now = time.monotonic()
        if e["type"] == "partial":
            partial_times.append(now)
        elif e["type"] == "final":
            final_events.append((now, e))

    client = StreamClient(url, partials=partials, on_event=on_event)
    try:
        await client.connect()
        t0 = time.monotonic()
        for i in range(0, len(script.audio), FRAME):
            await client.send_audio(script.audio[i : i + FRAME])
            if realtime:
                delay = t0 + (i + FRAME) / 16000 - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
        finals = await client.finish(timeout_s=300)
    except StreamError as exc:
        result.error = exc.code
        await client.close()
        return result
    result.finals = finals
    result.hypothesis = " ".join(f.text for f in finals)
    if realtime:
        for now, e in final_events:
            due = t0 + (e["end"] - POST_ROLL_S + ENDPOINT_S)
            if e["end"] < len(script.audio) / 16000 - 0.1:  # not the flush at the very end
                result.latencies.append(now - due)
    result.partial_gaps = list(np.diff(partial_times)) if len(partial_times) > 1 else []
    return result


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def drive(url: str, scripts: list[Script], realtime: bool, partials: bool,
                stagger_s: float) -> list[StreamResult]:
    return list(await asyncio.gather(*(
        run_stream(url, s, realtime, partials, i * stagger_s) for i, s in enumerate(scripts))))


def summarize(n: int, results: list[StreamResult]) -> dict:
    lat = [x for r in results for x in r.latencies]
    gaps = [x for r in results for x in r.partial_gaps]
    ok = [r for r in results if r.error is None]
    wer = word_error_rate([r.reference for r in ok], [r.hypothesis for r in ok]) if ok else None
    return {
        "streams": n, "failed": len(results) - len(ok),
        "errors": sorted({r.error for r in results if r.error}),
        "finals": sum(len(r.finals) for r in ok),
        "wer": wer.wer if wer else None,
        "p50_latency_s": pct(lat, 50), "p95_latency_s": pct(lat, 95),
        "partial_gap_median_s": float(np.median(gaps)) if gaps else None,
    }


def server_args(args: argparse.Namespace) -> list[str]:
    out = ["--workers", str(args.workers), "--max-sessions", "1000"]
    if args.threads:
        out += ["--threads", str(args.threads)]
    if args.server_config:
        out += ["--config", str(args.server_config)]
    return out


def cmd_sweep(args: argparse.Namespace) -> list[dict]:
    rows = []
    for n in [int(x) for x in args.streams.split(",")]:
        server = start_server(*server_args(args))
        try:
            scripts = build_scripts(n, args.seconds)
            results = asyncio.run(drive(server.url, scripts, True, True, args.stagger))
            row = summarize(n, results)
            row["server_counters"] = server.health()["counters"]
        finally:
            server.stop()
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("| streams | failed | WER | p50 endpoint->final | p95 endpoint->final "
          "| p95 speech end->final | median partial gap |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        gap = f"{r['partial_gap_median_s']:.2f} s" if r["partial_gap_median_s"] else "-"
        print(f"| {r['streams']} | {r['failed']} | {r['wer'] * 100:.1f}% "
              f"| {r['p50_latency_s'] * 1000:.0f} ms | {r['p95_latency_s'] * 1000:.0f} ms "
              f"| {(r['p95_latency_s'] + ENDPOINT_S) * 1000:.0f} ms | {gap} |")
    return rows


def cmd_saturate(args: argparse.Namespace) -> dict:
    from edge_server.engine import create_engine
    from edge_server.segmenter import Segmenter
    from edge_server.vad import SileroVad

    n = int(args.streams.split(",")[0]) if args.streams else 24
    scripts = build_scripts(n, args.seconds)
    vad = SileroVad()
    segments = []
    for s in scripts:
        seg = Segmenter(vad.stream())
        segments += [x.audio for x in seg.feed(s.audio) + seg.flush()]
    threads = (args.threads or 1) * args.workers
    engine = create_engine(device="cpu", threads=threads)
    engine.transcribe_batch(segments[:4])
    started = time.perf_counter()
    for i in range(0, len(segments), 16):
        engine.transcribe_batch(segments[i : i + 16])
    raw_wall = time.perf_counter() - started
    seg_audio = sum(len(a) for a in segments) / 16000
    raw = seg_audio / raw_wall
    del engine
    server = start_server(*server_args(args))
    try:
        started = time.perf_counter()
        results = asyncio.run(drive(server.url, scripts, False, False, 0.0))
        wall = time.perf_counter() - started
    finally:
        server.stop()
    pipe = seg_audio / wall
    row = summarize(n, results) | {"segment_audio_s": seg_audio, "engine_raw_x": raw,
                                   "pipeline_x": pipe, "ratio": pipe / raw}
    print(json.dumps(row))
    print(f"engine raw: {raw:.1f}x real time ({threads} thread(s), batch 16); pipeline: "
          f"{pipe:.1f}x over {n} streams; ratio {pipe / raw:.2f}")
    return row


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cmd_gateway(args: argparse.Namespace) -> dict:
    n = int(args.streams.split(",")[0]) if args.streams else 500
    server = start_server("--noop-engine", "--max-sessions", str(n + 10))
    try:
        scripts = build_scripts(min(n, 16), args.seconds)
        scripts = [scripts[i % len(scripts)] for i in range(n)]
        cpu0, t0 = proc_cpu_seconds(server.proc.pid), time.monotonic()
        results = asyncio.run(drive(server.url, scripts, True, True, args.stagger))
        cpu1, t1 = proc_cpu_seconds(server.proc.pid), time.monotonic()
    finally:
        server.stop()
    row = summarize(n, results) | {"server_cpu_cores": (cpu1 - cpu0) / (t1 - t0),
                                   "wall_s": t1 - t0}
    row.pop("wer")
    print(json.dumps(row))
    print(f"{n} real-time streams, noop engine: server process used "
          f"{row['server_cpu_cores']:.2f} CPU cores over {row['wall_s']:.0f} s; "
          f"{row['failed']} failed")
    return row


def cmd_single(args: argparse.Namespace) -> dict:
    server = start_server(*server_args(args))
    try:
        scripts = build_scripts(1, args.seconds)
        (result,) = asyncio.run(drive(server.url, scripts, True, True, 0))
    finally:
        server.stop()
    row = summarize(1, [result])
    print(json.dumps(row))
    print(f"single stream: p50 endpoint->final {row['p50_latency_s'] * 1000:.0f} ms, "
          f"p95 {row['p95_latency_s'] * 1000:.0f} ms, median partial gap "
          f"{row['partial_gap_median_s']:.2f} s, WER {row['wer'] * 100:.1f}%")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=("sweep", "single", "saturate", "gateway"))
    ap.add_argument("--streams", default="8,16,24,32")
    ap.add_argument("--seconds", type=float, default=45.0, help="speech per stream")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--stagger", type=float, default=0.05, help="seconds between stream starts")
    ap.add_argument("--server-config", type=Path, help="TOML settings for the server")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    os.environ.setdefault("EARSHOT_MODELS_DIR", default_models_dir())
    result = {"sweep": cmd_sweep, "single": cmd_single, "saturate": cmd_saturate,
              "gateway": cmd_gateway}[args.mode](args)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    sys.exit(main())
