"""Throughput of the OpenAI-compatible upload API against sherpa-onnx on the same files.

    python -m bench.uploads [--concurrency 8] [--repeat 3] [--workers 1 --threads 2]

Starts an `earshot-server` on 127.0.0.1 and uploads the 18 dev sentences `--repeat` times
with the official `openai` client from `--concurrency` threads (the client shares this
machine's cores). The reference, measured first in the same run, is sherpa-onnx decoding
the same clips one by one with workers x threads threads. Prints audio seconds per wall
second for both, their ratio, request latency p50/p95 and the API's WER.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import openai

from bench.engine_throughput import sherpa_decoder
from bench.models_env import default_dev_dir, default_models_dir
from edge_server.audio import read_audio
from edge_server.evaluation import read_references, word_error_rate
from loadtest.local_server import LocalServer
from loadtest.speech import SENTENCE_SETS


def sherpa_reference(clips: list[np.ndarray], threads: int) -> float:
    from edge_server.engine import create_engine
    from models.store import require_model

    engine = create_engine(device="cpu", threads=1)
    decode = sherpa_decoder(engine, require_model(engine.model_id), threads, "cpu")
    decode(clips[:2])
    started = time.perf_counter()
    decode(clips)
    return time.perf_counter() - started


def upload_all(url: str, paths: list[Path], concurrency: int) -> tuple[float, list, list]:
    client = openai.OpenAI(base_url=url + "/v1", api_key="local", max_retries=0,
                           timeout=600)

    def one(path: Path) -> tuple[str, float]:
        started = time.perf_counter()
        with path.open("rb") as fh:
            text = client.audio.transcriptions.create(model="whisper-1", file=fh).text
        return text, time.perf_counter() - started

    one(paths[0])  # warm-up
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, paths))
    return time.perf_counter() - started, [t for t, _ in results], [s for _, s in results]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    os.environ.setdefault("EARSHOT_MODELS_DIR", default_models_dir())
    rows = [r for r in read_references(default_dev_dir() / "transcripts.tsv")
            if r.set in SENTENCE_SETS] * args.repeat
    paths = [r.path for r in rows]
    clips = [read_audio(path) for path in paths]
    audio_s = sum(len(c) for c in clips) / 16_000
    threads = args.workers * args.threads
    sherpa_wall = sherpa_reference(clips, threads)
    server = LocalServer(["--workers", str(args.workers), "--threads", str(args.threads)]).start()
    try:
        wall, texts, latencies = upload_all(server.url, paths, args.concurrency)
    finally:
        server.stop()
    wer = word_error_rate([r.transcript for r in rows], texts).wer
    row = {"files": len(paths), "audio_s": round(audio_s, 1), "concurrency": args.concurrency,
           "workers": args.workers, "threads": args.threads,
           "sherpa_x": round(audio_s / sherpa_wall, 1), "api_x": round(audio_s / wall, 1),
           "ratio": round(sherpa_wall / wall, 2),
           "latency_p50_s": round(float(np.percentile(latencies, 50)), 3),
           "latency_p95_s": round(float(np.percentile(latencies, 95)), 3),
           "wer": round(wer, 4)}
    print(json.dumps(row))
    print(f"sherpa-onnx one by one ({threads} threads): {row['sherpa_x']}x real time; "
          f"upload API at concurrency {args.concurrency}: {row['api_x']}x; "
          f"ratio {row['ratio']}; p50 {row['latency_p50_s']} s, p95 {row['latency_p95_s']} s; "
          f"WER {wer:.2%}")


if __name__ == "__main__":
    main()
