"""`earshot transcribe FILE...`: local batched transcription to txt/json/srt/vtt."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edge_server.engine import create_engine
from edge_server.engine.runtime import DEVICES
from edge_server.file_transcriber import FileResult, FileTranscriber
from edge_server.formats import FORMATS, render


def add_engine_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="catalog model id (default: moonshine-tiny-en); with "
                   "--server, one the server serves (default: the server's default)")
    p.add_argument("--device", choices=DEVICES, default="auto", help="inference device")
    p.add_argument("--threads", type=int, help="onnxruntime threads (default: cores, max 8)")
    p.add_argument("--batch-size", type=int, default=16, help="segments decoded together")
    p.add_argument("--batch-across-files", action="store_true",
                   help="also batch segments of different files (faster; a file's text may "
                        "then vary slightly with its batch-mates)")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("transcribe", help="transcribe audio files (wav, flac, ogg, ...)")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    p.add_argument("--format", choices=FORMATS, default="txt")
    p.add_argument("-o", "--output", type=Path,
                   help="output file, or a folder for one file per input (<name>.<format>)")
    add_engine_options(p)
    p.add_argument("--server", metavar="URL|auto",
                   help="stream the files to an edge server instead: https://host:port (pinned "
                   "and with its token when paired: `earshot pair`), or auto (the best "
                   "trusted server on the LAN)")
    p.add_argument("--token", help="the server's token, with --server (default: the stored one)")
    p.add_argument("--fingerprint", help="with --server https://...: accept only the "
                   "certificate with this SHA-256 fingerprint (`earshot-server identity`)")
    p.add_argument("--realtime", action="store_true",
                   help="with --server: send audio at real-time pace, as a microphone would")
    p.set_defaults(func=run)


def write_outputs(results: list[FileResult], fmt: str, output: Path | None) -> None:
    """Write transcripts to stdout, one file, or one file per input in a folder."""
    done = [r.transcript for r in results if r.transcript is not None]
    if output is not None and (output.is_dir() or (len(results) > 1 and fmt in ("srt", "vtt"))):
        output.mkdir(parents=True, exist_ok=True)
        for r in results:
            if r.transcript is not None:
                (output / f"{r.path.stem}.{fmt}").write_text(render([r.transcript], fmt), "utf-8")
        return
    if fmt in ("srt", "vtt") and len(done) > 1:
        raise ValueError(f"{fmt} holds one file's transcript; use -o FOLDER for several files")
    if not done:
        return
    text = render(done, fmt)
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text, encoding="utf-8")


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise ValueError("--batch-size must be at least 1")
    if args.server:
        import asyncio

        from desktop.commands.remote_transcribe import stream_files
        from desktop.commands.servers_cmd import resolve_server

        target = resolve_server(args.server, args.token, args.fingerprint)
        results = asyncio.run(stream_files(args.files, target.url, target.token, args.realtime,
                                           fingerprint=target.fingerprint, model=args.model))
    else:
        engine = create_engine(args.model, device=args.device, threads=args.threads)
        transcriber = FileTranscriber(engine, batch_size=args.batch_size,
                                      across_files=args.batch_across_files)
        results = list(transcriber.transcribe_files(args.files))
    for r in results:
        if r.error:
            print(f"earshot: error: {r.error}", file=sys.stderr)
    write_outputs(results, args.format, args.output)
    return 1 if any(r.error for r in results) else 0
