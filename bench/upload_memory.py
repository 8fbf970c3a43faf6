"""Server memory while it transcribes one long, low-bit-rate upload.

    python -m bench.upload_memory [--minutes 60] [--bitrate 8000] [--workers 1 --threads 2]

Writes `--minutes` of the 18 dev sentences (with pauses, looped) as Ogg Opus at
`--bitrate` bits/s, starts an `earshot-server` on 127.0.0.1, warms it up with one short
upload, then uploads the long file with the official `openai` client while sampling
resident memory (psutil, every 0.2 s) of the server process and of its upload-decoder
child processes; the engine workers are reported apart (their memory follows batch
sizes, not uploads). Prints one JSON line: growth over the pre-upload baseline of the
server process alone, of the server plus its decoder child (the figure that matters),
the decoder child's peak, the workers' growth, wall time and WER.
Needs the models and dev speech of ../shared (or EARSHOT_MODELS_DIR / EARSHOT_SHARED).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import openai
import psutil

from bench.models_env import default_dev_dir, default_models_dir
from bench.server_health import read_health as health
from edge_server.audio import read_audio
from edge_server.evaluation import word_error_rate

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EARSHOT_SHARED", REPO.parent / "shared"))
DEV = default_dev_dir()
SETS = ("sherpa-test-wavs", "librispeech-test-clean-kw", "pocketsphinx-testdata")
MB = 1 << 20


def dev_loop() -> tuple[np.ndarray, str, Path]:
    """The 18 dev sentences joined by 0.8 s pauses, their transcript, one of the files."""
    with (DEV / "transcripts.tsv").open(encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh, delimiter="\t") if r["set"] in SETS]
    gap = np.zeros(int(0.8 * 16_000), np.float32)
    parts = [np.zeros(8_000, np.float32)]
    for row in rows:
        parts += [read_audio(DEV / row["path"]), gap]
    return np.concatenate(parts), " ".join(r["transcript"] for r in rows), DEV / rows[0]["path"]


def write_opus(path: Path, minutes: float, bit_rate: int) -> tuple[float, str]:
    """Whole loops up to `minutes` as Ogg Opus; (audio seconds, reference transcript)."""
    audio, text, _ = dev_loop()
    loops = max(1, round(minutes * 60 * 16_000 / len(audio)))
    pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16).reshape(1, -1)
    with av.open(str(path), "w", format="ogg") as container:
        stream = container.add_stream("libopus", rate=16_000, layout="mono")
        stream.bit_rate = bit_rate
        stream.options = {"compression_level": "0", "application": "voip"}
        for i in range(loops):
            frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
            frame.sample_rate, frame.time_base, frame.pts = 16_000, Fraction(1, 16_000), \
                i * len(audio)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return loops * len(audio) / 16_000, " ".join([text] * loops)


def start_server(extra: list[str], folder: Path) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("EARSHOT_MODELS_DIR", default_models_dir())
    state = str(folder / "state")
    env.setdefault("EARSHOT_SERVER_STATE_DIR", state)
    env.setdefault("EARSHOT_SERVER_TOKEN_FILE", str(Path(state) / "token"))
    proc = subprocess.Popen([sys.executable, "-m", "edge_server.cli", "--host", "127.0.0.1",
                             "--port", "0", "--no-mdns", *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    assert proc.stdout is not None
    url = None
    while url is None:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("server exited")
        if m := re.search(r"listening on (http://\S+)", line):
            url = m.group(1)
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
    deadline = time.monotonic() + 180
    while health(url).get("status") != "ready":
        if time.monotonic() > deadline:
            raise RuntimeError("server never became ready")
        time.sleep(0.2)
    return proc, url


def zygotes(server: psutil.Process) -> list[psutil.Process]:
    """The server's upload-decoder zygote (none before the first upload)."""
    found = []
    for child in server.children():
        try:
            if "edge_server.decoder_zygote" in child.cmdline():
                found.append(child)
        except psutil.Error:
            pass
    return found


def rss(pid: int) -> int:
    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--bitrate", type=int, default=8_000)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="earshot-bench-memory-"))
    path = folder / "long.ogg"
    audio_s, reference = write_opus(path, args.minutes, args.bitrate)
    proc, url = start_server(["--workers", str(args.workers), "--threads", str(args.threads)],
                             folder)
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key="local", max_retries=0,
                               timeout=7200)
        client.audio.transcriptions.create(model="whisper-1", file=dev_loop()[2].open("rb"))
        workers = set(health(url).get("worker_pids", []))
        server = psutil.Process(proc.pid)
        base_server = rss(proc.pid)
        base_zygote = sum(rss(z.pid) for z in zygotes(server))  # the warm-up started it
        base_workers = sum(rss(w) for w in workers)
        peak = {"server": 0, "total": 0, "decoder": 0, "zygote": 0, "workers": 0}
        result: dict = {}

        def upload() -> None:
            started = time.perf_counter()
            with path.open("rb") as fh:
                result["response"] = client.audio.transcriptions.create(
                    model="whisper-1", file=fh, response_format="verbose_json")
            result["wall"] = time.perf_counter() - started

        thread = threading.Thread(target=upload)
        thread.start()
        while thread.is_alive():
            zygote = zygotes(server)
            s = rss(proc.pid)
            z = sum(rss(p.pid) for p in zygote)
            d = sum(rss(c.pid) for p in zygote for c in p.children())
            peak["server"] = max(peak["server"], s)
            peak["zygote"] = max(peak["zygote"], z)
            peak["decoder"] = max(peak["decoder"], d)
            peak["total"] = max(peak["total"], s + z + d)
            peak["workers"] = max(peak["workers"], sum(rss(w) for w in workers))
            time.sleep(0.2)
        thread.join()
    finally:
        proc.terminate()
        proc.wait(60)
    response = result["response"]
    wer = word_error_rate([reference], [response.text]).wer
    row = {"audio_s": round(audio_s, 1), "file_mb": round(path.stat().st_size / 1e6, 2),
           "bitrate": args.bitrate, "workers": args.workers, "threads": args.threads,
           "duration_reported_s": round(response.duration, 1),
           "wall_s": round(result["wall"], 1),
           "server_baseline_mb": round(base_server / MB, 1),
           "server_growth_mb": round((peak["server"] - base_server) / MB, 1),
           "server_plus_decoder_growth_mb": round(
               (peak["total"] - base_server - base_zygote) / MB, 1),
           "zygote_mb": round(base_zygote / MB, 1),
           "decoder_peak_mb": round(peak["decoder"] / MB, 1),
           "workers_growth_mb": round((peak["workers"] - base_workers) / MB, 1),
           "wer": round(wer, 4)}
    print(json.dumps(row))
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
