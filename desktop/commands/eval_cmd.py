"""`earshot eval TSV`: word error rate and real-time factor over reference transcripts."""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

from desktop.commands.transcribe_cmd import add_engine_options
from edge_server.engine import create_engine
from edge_server.evaluation import normalize, read_references, word_error_rate
from edge_server.file_transcriber import FileTranscriber


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="WER and real-time factor over a transcripts.tsv")
    p.add_argument("tsv", type=Path, metavar="TSV", help="columns: set, path, transcript")
    p.add_argument("--set", action="append", dest="sets", metavar="NAME",
                   help="only rows of this set (repeatable)")
    p.add_argument("--limit", type=int, help="at most this many rows")
    p.add_argument("--audio-dir", type=Path, metavar="DIR",
                   help="resolve the TSV's paths against DIR instead of the TSV's folder")
    p.add_argument("--show-errors", action="store_true",
                   help="also list each utterance whose normalised text differs")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    add_engine_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    refs = read_references(args.tsv)
    if args.audio_dir:
        tsv_dir = args.tsv.parent
        refs = [replace(r, path=args.audio_dir / r.path.relative_to(tsv_dir)) for r in refs]
    if args.sets:
        refs = [r for r in refs if r.set in args.sets]
    refs = refs[: args.limit] if args.limit else refs
    if not refs:
        raise ValueError("no rows to evaluate (check --set names)")
    engine = create_engine(args.model, device=args.device, threads=args.threads)
    transcriber = FileTranscriber(engine, batch_size=args.batch_size,
                                  across_files=args.batch_across_files)
    started = time.perf_counter()
    results = list(transcriber.transcribe_files(r.path for r in refs))
    wall = time.perf_counter() - started
    by_set: dict[str, list[tuple[str, str, float]]] = defaultdict(list)
    failed = 0
    errors: list[dict] = []  # utterances whose normalised text differs (--show-errors)
    for ref, res in zip(refs, results, strict=True):
        if res.transcript is None:
            failed += 1
            print(f"earshot: error: {res.error}")
            continue
        by_set[ref.set].append((ref.transcript, res.transcript.text, res.transcript.duration))
        if normalize(ref.transcript) != normalize(res.transcript.text):
            errors.append({"path": str(ref.path), "reference": normalize(ref.transcript),
                           "hypothesis": normalize(res.transcript.text)})
    report: dict = {"model": engine.model_id, "provider": engine.provider, "sets": {}}
    rows = []
    for name, items in [*sorted(by_set.items()), ("ALL", [i for v in by_set.values() for i in v])]:
        score = word_error_rate([i[0] for i in items], [i[1] for i in items])
        audio = sum(i[2] for i in items)
        report["sets"][name] = {"utterances": len(items), "words": score.words,
                                "errors": score.errors, "wer": score.wer, "audio_s": audio}
        rows.append((name, len(items), score.words, score.wer))
    total_audio = report["sets"]["ALL"]["audio_s"]
    report["wall_s"] = wall
    report["rtf"] = wall / total_audio if total_audio else None
    report["failed"] = failed
    if args.show_errors:
        report["errors"] = errors
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"model {engine.model_id} on {engine.provider}")
        print(f"{'set':<28} {'utts':>5} {'words':>6} {'WER':>7}")
        for name, n, words, wer in rows:
            print(f"{name:<28} {n:>5} {words:>6} {wer * 100:>6.2f}%")
        rtf = report["rtf"]
        print(f"audio {total_audio:.1f} s, wall {wall:.2f} s, real-time factor "
              f"{rtf:.4f} ({1 / rtf:.1f}x faster than real time)" if rtf else "no audio")
        for e in report.get("errors", ()):
            print(f"{e['path']}\n  ref: {e['reference']}\n  hyp: {e['hypothesis']}")
    return 1 if failed else 0
