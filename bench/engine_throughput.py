"""Engine accuracy and speed vs sherpa-onnx on the same files, in the same run.

    python -m bench.engine_throughput [--model ID] [--form NAME] [--device cpu|cuda|auto]
        [--threads 1] [--batches 1,4,16] [--reps 5] [--utterances 48] [--json OUT]
    python -m bench.engine_throughput --fit [--model ID] [--form NAME] [--device D]

Workload: the dev sentences (sherpa-test-wavs, librispeech-test-clean-kw,
pocketsphinx-testdata) repeated to `--utterances` clips in a fixed shuffled order. Each
repetition times sherpa-onnx's Moonshine v2 recognizer on the same model files (one clip
at a time: it has no batch API) and then the Earshot engine at every batch size, so machine
drift hits all alike. The table gives word error rate on the dev sentences (each once),
real-time factor (median over repetitions, with min-max spread) and the median of the
per-repetition speed ratios to sherpa-onnx. sherpa-onnx runs on CPU (`--device cuda`
compares the engine on CUDA with sherpa-onnx on CPU; pass `--no-sherpa` to skip it).

`--fit` times decoder steps over a grid of batch rows x encoder lengths and fits the
engine's per-(model, device) step cost model (edge_server/engine/costmodel.py); it prints
the `StepCost(...)` line to put in `COSTS`.
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

from bench.models_env import default_dev_dir, default_models_dir
from edge_server.audio import read_audio
from edge_server.engine import create_engine
from edge_server.engine.costmodel import fit_step_cost
from edge_server.evaluation import word_error_rate

SETS = ("sherpa-test-wavs", "librispeech-test-clean-kw", "pocketsphinx-testdata")
DEFAULT_DEV = default_dev_dir()


def load_sentences(dev: Path) -> tuple[list[np.ndarray], list[str]]:
    with (dev / "transcripts.tsv").open(encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh, delimiter="\t") if r["set"] in SETS]
    return [read_audio(dev / r["path"]) for r in rows], [r["transcript"] for r in rows]


def workload(clips: list[np.ndarray], count: int) -> list[np.ndarray]:
    order = [clips[i % len(clips)] for i in range(count)]
    random.Random(0).shuffle(order)
    return order


def sherpa_decoder(engine, threads: int):
    """A function decoding one clip with sherpa-onnx on the engine's own files."""
    import sherpa_onnx

    tokens = Path(tempfile.mkdtemp()) / "tokens.txt"
    tokens.write_text(engine.tokenizer.sherpa_tokens_txt())
    paths = engine.paths
    rec = sherpa_onnx.OfflineRecognizer.from_moonshine_v2(
        encoder=str(paths["encoder"]), decoder=str(paths["decoder"]),
        tokens=str(tokens), num_threads=threads, provider="cpu")

    def run(clip: np.ndarray) -> str:
        stream = rec.create_stream()
        stream.accept_waveform(16_000, clip)
        rec.decode_stream(stream)
        return stream.result.text.strip()

    return run


def fit(engine, dev: Path, rows_grid=(1, 2, 4, 8, 16), seconds=(1, 4, 10), reps: int = 3,
        quiet: bool = False):
    """Time decoder steps over rows x encoder lengths; return (StepCost, samples)."""
    clips, _ = load_sentences(dev)
    base = clips[0]
    samples = []
    for sec in seconds:
        n = 16_000 * sec
        audio = np.tile(base, n // len(base) + 1)[:n]
        hidden = engine.encode(audio)
        for rows in rows_grid:
            times = []
            steps = 0
            for _ in range(reps):
                start = time.perf_counter()
                out = engine._greedy_decode([hidden] * rows, [40] * rows, check_loops=False)
                times.append(time.perf_counter() - start)
                steps = max(len(t) for t in out) + 1
            ms = statistics.median(times) * 1000 / steps
            samples.append((rows, hidden.shape[0], ms))
            if not quiet:
                print(f"rows {rows:3d} frames {hidden.shape[0]:4d}: {ms:.3f} ms/step")
    note = f"{engine.form} form, {engine.device}, fitted {time.strftime('%Y-%m-%d')}"
    return fit_step_cost(samples, note=note), samples


def measure(engine, dev: Path, batches: list[int], reps: int, utterances: int,
            threads: int, sherpa: bool = True, sentences_n: int | None = None) -> dict:
    """WER and RTF of sherpa-onnx and the engine at each batch size (see module doc).
    sentences_n: score WER on the first N dev sentences only (quick runs)."""
    sentences, refs = load_sentences(dev)
    clips = workload(sentences, utterances)
    sentences, refs = sentences[:sentences_n], refs[:sentences_n]
    audio_s = sum(len(c) for c in clips) / 16_000
    runners: dict = {}
    texts: dict[str, list[str]] = {}
    if sherpa:
        ref_run = sherpa_decoder(engine, threads)
        runners["sherpa-onnx"] = lambda: [ref_run(c) for c in clips]
        texts["sherpa-onnx"] = [ref_run(c) for c in sentences]

    def engine_run(batch: int):
        return lambda: [engine.transcribe_batch(clips[i : i + batch])
                        for i in range(0, len(clips), batch)]

    for b in batches:
        name = f"earshot b={b}"
        runners[name] = engine_run(b)
        texts[name] = [t for i in range(0, len(sentences), b)
                       for t in engine.transcribe_batch(sentences[i : i + b])]
    warm = clips[: max(batches)]
    if sherpa:
        [ref_run(c) for c in warm]
    engine.transcribe_batch(warm)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(reps):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    results = {}
    ref_times = times.get("sherpa-onnx")
    for name, ts in times.items():
        rtfs = [t / audio_s for t in ts]
        ratio = (statistics.median(r / t for r, t in zip(ref_times, ts, strict=True))
                 if ref_times else None)
        results[name] = {"wer": word_error_rate(refs, texts[name]).wer,
                         "rtf": statistics.median(rtfs), "rtf_min": min(rtfs),
                         "rtf_max": max(rtfs), "ratio": ratio, "times": ts}
    return {"audio_s": audio_s, "clips": len(clips), "results": results}


def print_table(engine, args, report: dict) -> None:
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, {platform.python_version()}; "
          f"{engine.model_id} ({engine.form} form) on {engine.provider}, "
          f"{args.threads} thread(s); {report['clips']} clips, {report['audio_s']:.1f} s "
          f"audio, {args.reps} reps (median, min-max)")
    print("| decoder | WER (dev sentences) | RTF | speed vs sherpa-onnx |")
    print("|---|---|---|---|")
    for name, r in report["results"].items():
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-"
        print(f"| {name} | {100 * r['wer']:.1f}% | {r['rtf']:.4f} "
              f"({r['rtf_min']:.4f}-{r['rtf_max']:.4f}) | {ratio} |")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dev", type=Path, default=DEFAULT_DEV)
    ap.add_argument("--model", default=None, help="catalog id (default: the default model)")
    ap.add_argument("--form", default=None, help="model form (default: the device's)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    ap.add_argument("--batches", default="1,4,16")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--utterances", type=int, default=48)
    ap.add_argument("--no-sherpa", action="store_true", help="skip the sherpa-onnx reference")
    ap.add_argument("--sentences", type=int, help="score WER on the first N sentences only")
    ap.add_argument("--fit", action="store_true", help="fit the decoder step cost model")
    ap.add_argument("--fit-rows", default="1,2,4,8,16", help="batch rows timed by --fit")
    ap.add_argument("--fit-seconds", default="1,4,10", help="utterance lengths timed by --fit")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    os.environ.setdefault("EARSHOT_MODELS_DIR", default_models_dir())

    engine = create_engine(args.model, device=args.device, threads=args.threads,
                           form=args.form)
    if args.fit:
        cost, samples = fit(engine, args.dev,
                            tuple(int(r) for r in args.fit_rows.split(",")),
                            tuple(int(s) for s in args.fit_seconds.split(",")))
        print(f'("{engine.model_id}", "{engine.device}"): {cost!r},')
        if args.json:
            args.json.write_text(json.dumps({"model": engine.model_id, "form": engine.form,
                                             "device": engine.device, "cost": cost.__dict__,
                                             "samples": samples}))
        return
    report = measure(engine, args.dev, [int(b) for b in args.batches.split(",")], args.reps,
                     args.utterances, args.threads, sherpa=not args.no_sherpa,
                     sentences_n=args.sentences)
    print_table(engine, args, report)
    if args.json:
        report |= {"model": engine.model_id, "form": engine.form, "provider": engine.provider}
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
