"""CPU cost of one live dictation, with partials on and off, measured from outside.

    python -m bench.partial_cost [--seconds 45] [--repeats 3] [--threads N] [--config T.toml]
                                 [--dev /path/to/speech/dev] [--json OUT]

Starts one real `earshot-server` (`python -m edge_server.cli`, 127.0.0.1, port 0, no mDNS,
its own token and state in a temporary folder, `--workers 1`) and streams one dictation to
it at real time through the real WebSocket protocol (the project's StreamClient; 100 ms
PCM16 frames): dev sentences (`transcripts.tsv` in `--dev`; LibriSpeech and pocketsphinx
sentences, in a seeded shuffled order) joined by pauses of 0.6-1.6 s (seeded), starting
and ending with silence. Each repeat streams the same audio once with partials and once
without (alternating which goes first), with the server idle in between.

Measured per run:
- CPU seconds of the server process and all its descendants (worker processes), user +
  system, via psutil (a process started during the run counts from zero), divided by the
  seconds of audio streamed: "cores per live dictation".
- The partial cadence: the median gap between consecutive partials of the same segment
  (i.e. while speaking; the pauses between segments are not gaps), and partials per second
  of speech (segment audio).
- How far the last partial of each segment is from its final: word error rate of the
  last partials against the finals (0 = the final only confirmed what was shown).
- Agreement: of all the words shown in partials, the share the final kept (each partial's
  longest common word prefix with its segment's final, lower-cased, punctuation dropped,
  summed, over the partials' words summed): 1 = no partial showed a word the final changed.
- Final latency: from the moment its endpoint was due (speech end + endpoint silence, in
  stream time mapped to wall time) to the final's arrival, p50 and max.
Prints one JSON line per run, then the median (and min-max) per mode. Does not import tests/.

`--streams N` instead runs N such streams at once (partials on, each a rotation of the
audio, starts 50 ms apart) and reports how many `status` changes (degraded/normal) the
sessions were sent, per session per minute of audio, with CPU, partial gap and p95 final
latency: the flapping check for load shedding.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from bench.models_env import default_dev_dir, default_models_dir
from bench.server_health import read_health
from desktop.stream_client import StreamClient
from edge_server.audio import read_audio
from edge_server.evaluation import word_error_rate

FRAME = 1600  # 100 ms at 16 kHz
SENTENCE_SETS = ("librispeech-test-clean-kw", "pocketsphinx-testdata", "sherpa-test-wavs")
DEFAULT_DEV = default_dev_dir()


def build_audio(dev: Path, seconds: float, seed: int = 0) -> tuple[np.ndarray, float]:
    """Dev sentences joined by seeded pauses until `seconds` of audio; (audio, speech s)."""
    with (dev / "transcripts.tsv").open(encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh, delimiter="\t") if r["set"] in SENTENCE_SETS]
    if not rows:
        raise SystemExit(f"no sentences of {SENTENCE_SETS} in {dev / 'transcripts.tsv'}")
    rng = random.Random(seed)
    rng.shuffle(rows)
    parts = [np.zeros(8000, np.float32)]
    total, speech, i = 0.5, 0.0, 0
    while total < seconds:
        clip = read_audio(dev / rows[i % len(rows)]["path"])
        pause = np.zeros(int(rng.uniform(0.6, 1.6) * 16000), np.float32)
        parts += [clip, pause]
        total += (len(clip) + len(pause)) / 16000
        speech += len(clip) / 16000
        i += 1
    parts.append(np.zeros(16000, np.float32))
    return np.concatenate(parts), speech


class Server:
    """A real earshot-server subprocess; `cpu_seconds()` sums it and its descendants."""

    def __init__(self, extra: list[str], workdir: Path) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1",
                   EARSHOT_SERVER_TOKEN_FILE=str(workdir / "token"))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge_server.cli", "--host", "127.0.0.1", "--port", "0",
             "--no-mdns", "--state-dir", str(workdir / "state"), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.log: list[str] = []
        self.url = ""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 120
        while not self.url:
            line = self.proc.stdout.readline()
            if not line or time.monotonic() > deadline:
                self.stop()
                raise SystemExit("server did not start:\n" + "".join(self.log))
            self.log.append(line)
            if m := re.search(r"listening on (https?://\S+)", line):
                self.url = m.group(1)
        threading.Thread(target=lambda: self.log.extend(self.proc.stdout), daemon=True).start()
        while self._health().get("status") != "ready":
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise SystemExit("server never became ready:\n" + "".join(self.log))
            time.sleep(0.2)
        self.root = psutil.Process(self.proc.pid)

    def _health(self) -> dict:
        return read_health(self.url)

    def cpu_seconds(self) -> dict[int, float]:
        out = {}
        for p in [self.root, *self.root.children(recursive=True)]:
            try:
                t = p.cpu_times()
                out[p.pid] = t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds between two snapshots (processes gone by `after` are not counted)."""
    return sum(t - before.get(pid, 0.0) for pid, t in after.items())


async def stream_once(url: str, audio: np.ndarray, partials: bool, endpoint_s: float,
                      post_roll_s: float, start_delay: float = 0.0) -> dict:
    await asyncio.sleep(start_delay)
    partial_times: dict[int, list[float]] = {}
    last_partial: dict[int, str] = {}
    partial_texts: dict[int, list[str]] = {}
    finals: list[tuple[float, dict]] = []
    statuses: list[str] = []

    def on_event(e: dict) -> None:
        now = time.monotonic()
        if e["type"] == "partial":
            partial_times.setdefault(e["segment"], []).append(now)
            last_partial[e["segment"]] = e["text"]
            partial_texts.setdefault(e["segment"], []).append(e["text"])
        elif e["type"] == "final":
            finals.append((now, e))
        elif e["type"] == "status":
            statuses.append(e["state"])

    client = StreamClient(url, partials=partials, on_event=on_event)
    await client.connect()
    t0 = time.monotonic()
    for i in range(0, len(audio), FRAME):
        await client.send_audio(audio[i : i + FRAME])
        delay = t0 + (i + FRAME) / 16000 - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
    done = await client.finish(timeout_s=120)
    latencies = [now - (t0 + e["end"] - post_roll_s + endpoint_s) for now, e in finals
                 if e["end"] < len(audio) / 16000 - 0.1]
    gaps = [float(g) for ts in partial_times.values() for g in np.diff(ts)]
    seg_audio = sum(f.end - f.start for f in done)
    with_partial = [f for f in done if f.segment in last_partial]
    drift = word_error_rate([f.text for f in with_partial],
                            [last_partial[f.segment] for f in with_partial]).wer \
        if with_partial else None
    finals_by_segment = {f.segment: f.text for f in done}
    kept = shown = 0
    for seg, texts in partial_texts.items():
        final = _words(finals_by_segment.get(seg, ""))
        for text in texts:
            words = _words(text)
            shown += len(words)
            kept += _common_words(words, final)
    return {"finals": len(done), "text": " ".join(f.text for f in done),
            "partial_agreement": kept / shown if shown else None,
            "partials": sum(len(v) for v in partial_times.values()),
            "partials_per_speech_s": sum(len(v) for v in partial_times.values()) / seg_audio
            if seg_audio else 0.0,
            "partial_gap_median_s": float(np.median(gaps)) if gaps else None,
            "partial_gap_p90_s": float(np.percentile(gaps, 90)) if gaps else None,
            "final_latency_p50_s": float(np.median(latencies)) if latencies else None,
            "final_latency_max_s": max(latencies) if latencies else None,
            "last_partial_vs_final_wer": drift,
            "pairs": [[f.text, last_partial.get(f.segment, "")] for f in done],
            "status_changes": len(statuses), "latencies": latencies}


def _words(text: str) -> list[str]:
    return re.sub(r"[^\w' ]+", " ", text.lower()).split()


def _common_words(a: list[str], b: list[str]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


async def many(url: str, audio: np.ndarray, n: int, endpoint_s: float,
               post_roll_s: float) -> list[dict]:
    """`n` concurrent live streams with partials (each its own rotation of the audio)."""
    shift = len(audio) // max(n, 1)
    return list(await asyncio.gather(*(
        stream_once(url, np.roll(audio, i * shift), True, endpoint_s, post_roll_s, i * 0.05)
        for i in range(n))))


def run_load(server: Server, audio: np.ndarray, n: int, args: argparse.Namespace) -> dict:
    """`--streams N`: how often sessions are told degraded/normal, and what it costs."""
    before, w0 = server.cpu_seconds(), time.monotonic()
    rows = asyncio.run(many(server.url, audio, n, args.endpoint_s, args.post_roll_s))
    cpu, wall = cpu_used(before, server.cpu_seconds()), time.monotonic() - w0
    changes = sum(r["status_changes"] for r in rows)
    lat = [x for r in rows for x in r["latencies"]]
    gaps = [r["partial_gap_median_s"] for r in rows if r["partial_gap_median_s"] is not None]
    out = {"streams": n, "wall_s": wall, "cores": cpu / wall,
           "status_changes": changes,
           "status_changes_per_session_minute": changes / n / (len(audio) / 16000 / 60),
           "partials": sum(r["partials"] for r in rows),
           "median_partial_gap_s": float(np.median(gaps)) if gaps else None,
           "final_latency_p95_s": float(np.percentile(lat, 95)) if lat else None,
           "finals": sum(r["finals"] for r in rows)}
    print(json.dumps(out), flush=True)
    return out


def summarize(runs: list[dict], key: str) -> str:
    values = [r[key] for r in runs if r.get(key) is not None]
    if not values:
        return "-"
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=45.0, help="audio per run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, help="onnxruntime threads (server default if unset)")
    ap.add_argument("--config", type=Path, help="TOML settings for the server")
    ap.add_argument("--dev", type=Path, default=Path(os.environ.get(
        "EARSHOT_DEV_SPEECH", DEFAULT_DEV)), help="folder with transcripts.tsv")
    ap.add_argument("--endpoint-s", type=float, default=0.6, help="the server's endpoint_ms")
    ap.add_argument("--post-roll-s", type=float, default=0.2, help="the server's post_roll_ms")
    ap.add_argument("--modes", default="on,off", help="partials on, off or both")
    ap.add_argument("--streams", type=int, default=0, help="instead: N concurrent streams "
                    "with partials, once; counts status (degraded/normal) changes")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    os.environ.setdefault("EARSHOT_MODELS_DIR", default_models_dir())
    audio, speech_s = build_audio(args.dev, args.seconds)
    audio_s = len(audio) / 16000
    extra = ["--workers", "1"]
    if args.threads:
        extra += ["--threads", str(args.threads)]
    if args.config:
        extra += ["--config", str(args.config)]
    modes = args.modes.split(",")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the server on the way out
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="partial-cost-") as tmp:
        server = Server(extra, Path(tmp))
        try:
            asyncio.run(stream_once(server.url, audio[:32000], True, args.endpoint_s,
                                    args.post_roll_s))  # warm-up: first decodes load caches
            if args.streams:
                load = run_load(server, audio, args.streams, args)
                if args.json:
                    args.json.write_text(json.dumps(load, indent=2))
                return
            for rep in range(args.repeats):
                for mode in modes if rep % 2 == 0 else modes[::-1]:
                    time.sleep(1.0)  # let the server settle
                    before, w0 = server.cpu_seconds(), time.monotonic()
                    row = asyncio.run(stream_once(server.url, audio, mode == "on",
                                                  args.endpoint_s, args.post_roll_s))
                    row["cpu_s"] = cpu_used(before, server.cpu_seconds())
                    row["wall_s"] = time.monotonic() - w0
                    row["cores"] = row["cpu_s"] / audio_s
                    row |= {"partials_on": mode == "on", "repeat": rep, "audio_s": audio_s,
                            "speech_s": speech_s}
                    runs.append(row)
                    print(json.dumps({k: v for k, v in row.items()
                                      if k not in ("text", "pairs", "latencies")}),
                          flush=True)
        finally:
            server.stop()
    print(f"\n{audio_s:.1f} s of audio ({speech_s:.1f} s of speech) per run, "
          f"{args.repeats} repeats; median (min-max)")
    print("| partials | cores per dictation | median partial gap (s) | partials per speech s "
          "| last partial vs final WER | agreement | final latency p50 (s) "
          "| final latency max (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for mode in modes:
        rs = [r for r in runs if r["partials_on"] == (mode == "on")]
        print(f"| {mode} | {summarize(rs, 'cores')} | {summarize(rs, 'partial_gap_median_s')} "
              f"| {summarize(rs, 'partials_per_speech_s')} "
              f"| {summarize(rs, 'last_partial_vs_final_wer')} "
              f"| {summarize(rs, 'partial_agreement')} "
              f"| {summarize(rs, 'final_latency_p50_s')} "
              f"| {summarize(rs, 'final_latency_max_s')} |")
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2))


if __name__ == "__main__":
    sys.exit(main())
