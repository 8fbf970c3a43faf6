"""Soak test: server memory while one stream carries speech that never pauses.

    python -m bench.soak [--minutes 30] [--speed 50] [--workers 1 --threads 2]

Starts its own `earshot-server` (python -m edge_server.cli on 127.0.0.1, port 0, no
mDNS, token and identity in a temporary folder) and streams `--minutes` of continuous
babble through one WebSocket stream with the project's StreamClient: dev utterances
(../shared/speech/dev, silence trimmed off both ends) from `--voices` tracks spoken over
each other back to back, so Silero VAD never hears an endpoint and every segment is cut at
`max_segment_s`. Frames of 200 ms are paced at `--speed` times real time (the server
refuses audio faster than `max_realtime_factor`, 100x by default, beyond a 30 s
allowance); partials are on.

Every `--sample-s` seconds it records the resident set size (psutil) of the server
process and of its worker processes. It prints, for the server alone and for server plus
workers: RSS once ready (start), after the first `--warmup-min` minutes of audio and at a
quarter, half and three quarters of it, after `ended` (end), the peak in each half of the
run (a bounded server's second-half peak is no higher than its first's; a leak's is), and
growth = end - start and end - the first reading; and checks the transcript: finals back
to back, each at most `max_segment_s`, covering all the audio.
The babble is made on the fly, so the client's own memory does not grow with `--minutes`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil

from bench.models_env import default_dev_dir, default_models_dir
from bench.server_health import read_health
from desktop.stream_client import StreamClient
from edge_server.audio import read_audio

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EARSHOT_SHARED", REPO.parent / "shared"))
RATE = 16_000
FRAME = 3200  # 200 ms
MB = 1 << 20


# ---- endless speech -------------------------------------------------------------------

def trim_silence(audio: np.ndarray, frame: int = 320, level: float = 0.02) -> np.ndarray:
    """`audio` without its leading and trailing 20 ms frames quieter than `level` RMS."""
    n = len(audio) // frame
    rms = np.sqrt(np.mean(audio[: n * frame].reshape(n, frame) ** 2, axis=1))
    loud = np.nonzero(rms > level)[0]
    return audio[loud[0] * frame : (loud[-1] + 1) * frame] if len(loud) else audio[:0]


def load_clips(dev: Path) -> list[np.ndarray]:
    with (dev / "transcripts.tsv").open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    clips = [trim_silence(read_audio(dev / r["path"])) for r in rows]
    return [c for c in clips if len(c)]


class Babble:
    """`voices` tracks of back-to-back clips in seeded random order, mixed on the fly."""

    def __init__(self, clips: list[np.ndarray], voices: int, seed: int = 0) -> None:
        self.clips = clips
        self.rng = np.random.default_rng(seed)
        self.voices = voices
        self.tracks = [self._next() for _ in range(voices)]  # (clip, position)

    def _next(self) -> tuple[np.ndarray, int]:
        return self.clips[self.rng.integers(len(self.clips))], 0

    def take(self, n: int) -> np.ndarray:
        out = np.zeros(n, np.float32)
        for v in range(self.voices):
            filled = 0
            while filled < n:
                clip, pos = self.tracks[v]
                k = min(n - filled, len(clip) - pos)
                out[filled : filled + k] += clip[pos : pos + k]
                filled += k
                self.tracks[v] = self._next() if pos + k == len(clip) else (clip, pos + k)
        return out / self.voices


# ---- the server and its memory ---------------------------------------------------------

class Server:
    """A real earshot-server process on 127.0.0.1 with its own token and identity folder."""

    def __init__(self, extra: list[str], ready_timeout: float = 180) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="earshot-soak-")
        env = dict(os.environ, PYTHONUNBUFFERED="1",
                   EARSHOT_SERVER_TOKEN_FILE=str(Path(self.tmp.name) / "server-token"),
                   EARSHOT_SERVER_STATE_DIR=self.tmp.name)
        env.setdefault("EARSHOT_MODELS_DIR", default_models_dir())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge_server.cli", "--host", "127.0.0.1", "--port", "0",
             "--no-mdns", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
        self.log: list[str] = []
        self.url = ""
        assert self.proc.stdout is not None
        while not self.url:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("server exited: " + "".join(self.log))
            self.log.append(line)
            if m := re.search(r"listening on (http://\S+)", line):
                self.url = m.group(1)
        threading.Thread(target=lambda: self.log.extend(self.proc.stdout), daemon=True).start()
        deadline = time.monotonic() + ready_timeout
        while self.health().get("status") != "ready":
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError("server never became ready: " + "".join(self.log))
            time.sleep(0.2)

    def health(self) -> dict:
        return read_health(self.url)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.tmp.cleanup()
        return self.proc.returncode


class RssSampler:
    """RSS of a process and its descendants, every `interval` seconds, in a thread."""

    def __init__(self, pid: int, interval: float) -> None:
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.samples: list[tuple[float, int, int]] = []  # (time, server bytes, total bytes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> tuple[float, int, int]:
        server = self.proc.memory_info().rss
        total = server
        for child in self.proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):  # a worker that just exited
                total += child.memory_info().rss
        row = (time.monotonic(), server, total)
        self.samples.append(row)
        return row

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except psutil.Error:
                return

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


# ---- the run ---------------------------------------------------------------------------

async def stream(url: str, babble: Babble, seconds: float, speed: float,
                 marks: list[float], on_mark: Callable[[float], object]) -> tuple[list, dict]:
    """Send `seconds` of babble at `speed`; call `on_mark(m)` once `m` audio seconds are sent."""
    ended: dict = {}
    client = StreamClient(url, partials=True,
                          on_event=lambda e: ended.update(e) if e["type"] == "ended" else None)
    await client.connect()
    total = int(seconds * RATE)
    started = time.monotonic()
    due = sorted(marks)
    sent = 0
    while sent < total:
        n = min(FRAME, total - sent)
        await client.send_audio(babble.take(n))
        sent += n
        while due and sent >= due[0] * RATE:
            on_mark(due.pop(0))
        ahead = started + sent / RATE / speed - time.monotonic()
        if ahead > 0:
            await asyncio.sleep(ahead)
    finals = await client.finish(timeout_s=600)
    return finals, ended


def check(finals: list, seconds: float, max_segment_s: float) -> list[str]:
    """Problems with the transcript of an endless stream (empty list: none)."""
    problems = []
    if [f.segment for f in finals] != list(range(len(finals))):
        problems.append("finals missing or out of order")
    if finals and (finals[0].start != 0 or abs(finals[-1].end - seconds) > 0.001):
        problems.append(f"finals cover {finals[0].start}..{finals[-1].end} s, not 0..{seconds}")
    gaps = sum(1 for a, b in itertools.pairwise(finals) if b.start != a.end)
    if gaps:
        problems.append(f"{gaps} gap(s) between cut segments")
    if any(f.end - f.start > max_segment_s + 0.001 for f in finals):
        problems.append("a segment longer than max_segment_s")
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0, help="audio streamed (default 30)")
    ap.add_argument("--speed", type=float, default=50.0,
                    help="times real time (default 50; the server's limit is 100)")
    ap.add_argument("--voices", type=int, default=3, help="utterances spoken at once")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sample-s", type=float, default=1.0, help="seconds between RSS samples")
    ap.add_argument("--warmup-min", type=float, default=1.0,
                    help="audio minutes before the 'warm' RSS reading")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-segment-s", type=float, default=20.0)
    ap.add_argument("--server-config", type=Path, help="TOML settings for the server")
    ap.add_argument("--dev", type=Path, default=default_dev_dir(),
                    help="dev speech folder with transcripts.tsv")
    ap.add_argument("--json", type=Path, help="also write the result here")
    args = ap.parse_args()

    seconds = args.minutes * 60
    babble = Babble(load_clips(args.dev), args.voices, args.seed)
    extra = ["--workers", str(args.workers), "--threads", str(args.threads),
             "--max-segment-s", str(args.max_segment_s)]
    if args.server_config:
        extra += ["--config", str(args.server_config)]
    server = Server(extra)
    marks = sorted({args.warmup_min * 60, seconds / 4, seconds / 2, 3 * seconds / 4})
    at_mark: dict[float, tuple[float, int, int]] = {}
    try:
        sampler = RssSampler(server.proc.pid, args.sample_s)
        start = sampler.sample()
        sampler.start()
        t0 = time.monotonic()
        finals, ended = asyncio.run(stream(
            server.url, babble, seconds, args.speed, marks,
            lambda m: at_mark.__setitem__(m, sampler.sample())))
        wall = time.monotonic() - t0
        sampler.stop()
        end = sampler.sample()
    finally:
        code = server.stop()
    samples = sampler.samples
    warm = at_mark.get(args.warmup_min * 60, start)
    half_t = at_mark.get(seconds / 2, start)[0]
    problems = check(finals, seconds, args.max_segment_s)
    if not ended:
        problems.append("no 'ended'")
    if code != 0:
        problems.append(f"server exited with {code}")

    def summary(k: int) -> dict:
        first = [s[k] for s in samples if s[0] < half_t] or [start[k]]
        second = [s[k] for s in samples if s[0] >= half_t] or [end[k]]
        row = {"start": start[k], "warm": warm[k], "peak": max(first + second),
               "peak_first_half": max(first), "peak_second_half": max(second), "end": end[k],
               "growth": end[k] - start[k], "growth_after_warm": end[k] - warm[k]}
        row |= {f"at_{m / 60:g}_min": at_mark[m][k] for m in sorted(at_mark)}
        return {key: round(v / MB, 1) for key, v in row.items()}

    result = {
        "minutes": args.minutes, "speed": args.speed, "voices": args.voices,
        "wall_s": round(wall, 1), "finals": len(finals), "samples": len(samples),
        "audio_seconds": ended.get("audio_seconds"),
        "server_mb": summary(1), "total_mb": summary(2), "problems": problems,
    }
    print(json.dumps(result))
    for label, part in (("server process", "server_mb"), ("server + workers", "total_mb")):
        r = result[part]
        trail = ", ".join(f"{k[3:].replace('_min', '')} min {v:.1f}" for k, v in r.items()
                          if k.startswith("at_"))
        print(f"{label}: start {r['start']:.1f} MB, {trail}, end {r['end']:.1f} MB; peak "
              f"{r['peak_first_half']:.1f} MB in the first half, {r['peak_second_half']:.1f} MB "
              f"in the second; growth {r['growth']:+.1f} MB "
              f"({r['growth_after_warm']:+.1f} MB after the first {args.warmup_min:g} min)")
    print(f"{args.minutes:g} min of babble at {args.speed:g}x in {wall:.0f} s: "
          f"{len(finals)} finals, " + ("; ".join(problems) if problems else "no audio lost"))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
