"""Engine throughput vs sherpa-onnx on the same files, in the same run.

    python -m bench.engine_throughput [--threads 1] [--batches 1,4,16] [--reps 5]

Workload: the dev sentences (sherpa-test-wavs, librispeech-test-clean-kw,
pocketsphinx-testdata) repeated to `--utterances` clips in a fixed shuffled order. Each
repetition times sherpa-onnx's Moonshine v2 recognizer (one clip at a time: it has no
batch API) and then the Earshot engine at every batch size, so machine drift hits all
alike; the table gives the median throughput (audio seconds per wall second) and the
median of the per-repetition ratios to sherpa-onnx.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from edge_server.audio import read_audio
from edge_server.engine import create_engine

SETS = ("sherpa-test-wavs", "librispeech-test-clean-kw", "pocketsphinx-testdata")
DEFAULT_DEV = Path(__file__).resolve().parents[1].parent / "shared" / "speech" / "dev"


def load_workload(dev: Path, count: int) -> list[np.ndarray]:
    with (dev / "transcripts.tsv").open(encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh, delimiter="\t") if r["set"] in SETS]
    clips = [read_audio(dev / r["path"]) for r in rows]
    order = [clips[i % len(clips)] for i in range(count)]
    random.Random(0).shuffle(order)
    return order


def sherpa_decoder(engine, model_dir: Path, threads: int, provider: str):
    import sherpa_onnx

    tokens = Path(tempfile.mkdtemp()) / "tokens.txt"
    tokens.write_text(engine.tokenizer.sherpa_tokens_txt())
    rec = sherpa_onnx.OfflineRecognizer.from_moonshine_v2(
        encoder=str(model_dir / "encoder_model.ort"),
        decoder=str(model_dir / "decoder_model_merged.ort"),
        tokens=str(tokens), num_threads=threads, provider=provider)

    def run(clips: list[np.ndarray]) -> None:
        for clip in clips:
            stream = rec.create_stream()
            stream.accept_waveform(16_000, clip)
            rec.decode_stream(stream)

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dev", type=Path, default=DEFAULT_DEV)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    ap.add_argument("--batches", default="1,4,16")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--utterances", type=int, default=48)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    batches = [int(b) for b in args.batches.split(",")]
    engine = create_engine(device=args.device, threads=args.threads)
    from models.store import require_model

    reference = sherpa_decoder(engine, require_model(engine.model_id), args.threads, "cpu")
    clips = load_workload(args.dev, args.utterances)
    audio_s = sum(len(c) for c in clips) / 16_000

    def engine_run(batch: int):
        return lambda: [engine.transcribe_batch(clips[i : i + batch])
                        for i in range(0, len(clips), batch)]

    runners = {"sherpa-onnx": lambda: reference(clips)}
    runners |= {f"earshot b={b}": engine_run(b) for b in batches}
    for run in runners.values():  # warm-up
        run()
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(args.reps):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)

    ref = times["sherpa-onnx"]
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, {platform.python_version()}; "
          f"engine on {engine.provider}, {args.threads} thread(s); "
          f"{len(clips)} clips, {audio_s:.1f} s audio, {args.reps} reps (median)")
    print("| decoder | throughput (audio s / s) | ratio vs sherpa-onnx |")
    print("|---|---|---|")
    results = {}
    for name, ts in times.items():
        thr = audio_s / statistics.median(ts)
        ratio = statistics.median(r / t for r, t in zip(ref, ts, strict=True))
        results[name] = {"throughput": thr, "ratio": ratio, "times": ts}
        print(f"| {name} | {thr:.1f} | {ratio:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
