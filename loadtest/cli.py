"""`earshot loadtest MODE`: N concurrent real-time clients of real speech against a server.

    earshot loadtest MODE [--server URL|local] [--token T] [--streams N] [--seconds S]
                          [--json PATH] [--plot PATH] ...

MODE: sweep | herd | slowloris | chaos | failover (loadtest/modes/). `--server local`
(the default) starts an `earshot-server` on 127.0.0.1 port 0 for the run and stops it.
Exit status: 0 every check passed; 1 a check failed (the summary says which); 2 the run
could not be made (bad option or URL, server unreachable, token refused, no speech,
--plot without matplotlib), with one line `earshot loadtest: error: ...`.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from loadtest import plot
from loadtest.accounting import DEFAULT_WER_BOUND
from loadtest.context import Context, Progress
from loadtest.local_server import ServerStartError
from loadtest.modes import MODES, get
from loadtest.report import document, summary, write_json
from loadtest.speech import SpeechError, load_clips
from loadtest.target import TargetError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("mode", choices=MODES, help="sweep: raise N until the latency bound "
                   "breaks; herd: N clients at once; slowloris: idle connections + real "
                   "streams; chaos: kill -9 workers; failover: app clients, server stopped")
    g = p.add_argument_group("server")
    g.add_argument("--server", default="local", metavar="URL|local",
                   help="server to test (default: local, one started here for the run)")
    g.add_argument("--token", help="the server's token (`earshot-server token` on the box)")
    g.add_argument("--fingerprint", help="SHA-256 of a https server's certificate (its pin)")
    g.add_argument("--endpoint-ms", type=float, default=600.0,
                   help="the server's endpoint silence (default 600; latency is measured "
                   "from speech end + this)")
    g.add_argument("--workers", type=int, help="local server: worker processes (default 1; "
                   "chaos 2)")
    g.add_argument("--threads", type=int, help="local server: onnxruntime threads per worker")
    g.add_argument("--max-sessions", type=int, help="local server: max_sessions (default: "
                   "the server's 64; sweep 1000)")
    g.add_argument("--server-config", type=Path, help="local server: a TOML settings file")
    g.add_argument("--server-setting", action="append", metavar="KEY=VALUE",
                   help="local server: one setting (TOML key, e.g. handshake_timeout_s=2; "
                   "segmenter.endpoint_ms=600), repeatable")
    g.add_argument("--server-pid", type=int, help="a server on this machine: its PID (CPU, "
                   "memory and chaos workers via psutil)")
    g = p.add_argument_group("load")
    g.add_argument("--streams", type=int, help="concurrent streams (sweep: the first level, "
                   "default 2; herd 2000; slowloris 10 real; chaos 4; failover 2)")
    g.add_argument("--seconds", type=float, default=30.0,
                   help="speech per stream, at real time (default 30)")
    g.add_argument("--audio", type=Path, nargs="+", help="utterances: audio files, or a "
                   "transcripts.tsv (set, path, transcript) for scored text (default: the "
                   "dev speech)")
    g.add_argument("--no-partials", action="store_true", help="streams ask for no partials")
    g.add_argument("--sources", metavar="IP[,IP]", help="local addresses the herd's clients "
                   "and slowloris's idle connections come from (default for --server local: "
                   "127.0.0.2, .3, ..., 250 each; else the system's choice)")
    g.add_argument("--stagger", type=float, default=0.05,
                   help="seconds between stream starts (default 0.05; herd: all at once)")
    g.add_argument("--seed", type=int, default=0, help="order of utterances per stream")
    g = p.add_argument_group("checks")
    g.add_argument("--bound", type=float, default=1.0,
                   help="p95 final latency bound in seconds (default 1.0)")
    g.add_argument("--wer-bound", type=float, default=DEFAULT_WER_BOUND,
                   help=f"a segment's WER above this fails it (default {DEFAULT_WER_BOUND})")
    g = p.add_argument_group("sweep")
    g.add_argument("--repeats", type=int, default=3, help="runs per level (default 3)")
    g.add_argument("--levels", help="levels to run, e.g. 4,8,16 (default: raise until the "
                   "bound breaks)")
    g.add_argument("--max-streams", type=int, default=256, help="highest level (default 256)")
    g = p.add_argument_group("herd")
    g.add_argument("--refusal-bound", type=float, default=1.0,
                   help="a refused client must get its 503 within this (default 1 s)")
    g.add_argument("--memory-bound-mb", type=float, default=2048.0,
                   help="server peak memory bound (default 2048 MB)")
    g = p.add_argument_group("slowloris")
    g.add_argument("--idle", type=int, help="idle connections (default 1000)")
    g.add_argument("--hello-timeout", type=float, help="the server's hello timeout (local: "
                   "set to this; default the server's 10 s)")

    g = p.add_argument_group("chaos")
    g.add_argument("--kill-every", type=float, default=10.0,
                   help="seconds between kills (default 10)")
    g.add_argument("--kill-cmd", help="shell command that kills a worker (remote box)")
    g.add_argument("--worker-pids", help="worker PIDs on this machine to kill, comma-separated")
    g = p.add_argument_group("failover")
    g.add_argument("--stop-after", type=float, help="seconds into the run to stop the "
                   "server (default half of --seconds)")
    g.add_argument("--stop-cmd", help="shell command that stops a remote server")
    g.add_argument("--stop-signal", choices=("term", "kill"), default="term",
                   help="local server: SIGTERM (drain, default) or SIGKILL")
    g.add_argument("--fallback", metavar="URL|local", help="the clients' fallback server "
                   "(default: a second local server started here)")
    g.add_argument("--fallback-token", help="token of --fallback")
    g = p.add_argument_group("output")
    g.add_argument("--json", type=Path, metavar="PATH", help="write the full report as JSON")
    g.add_argument("--plot", type=Path, metavar="PATH", help="write a PNG: latency and loss "
                   "against streams (needs matplotlib: pip install 'earshot[loadtest]')")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("loadtest", help="load-test a server with many real-time clients",
                       description=__doc__.split("\n\n")[0])
    add_arguments(p)
    p.set_defaults(func=run)


def _validate(args: argparse.Namespace) -> None:
    for name in ("streams", "repeats", "idle", "max_streams", "workers", "threads",
                 "max_sessions"):
        value = getattr(args, name, None)
        if value is not None and value < (0 if name == "idle" else 1):
            raise ValueError(f"--{name.replace('_', '-')} must be at least "
                             f"{0 if name == 'idle' else 1}")
    for name in ("seconds", "bound", "kill_every", "wer_bound", "refusal_bound"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive")
    if args.plot is not None and not plot.available():
        raise ValueError("--plot needs matplotlib: pip install 'earshot[loadtest]'")
    local_only = ("workers", "threads", "max_sessions", "server_config", "server_setting")
    if args.server != "local":
        given = [n for n in local_only if getattr(args, n)]
        if given:
            raise ValueError(f"--{given[0].replace('_', '-')} applies to --server local only")


def run(args: argparse.Namespace) -> int:
    command = "earshot loadtest " + " ".join(shlex.quote(a) for a in sys.argv[2:]) \
        if sys.argv[1:2] == ["loadtest"] else "earshot loadtest " + args.mode
    progress = None
    try:
        _validate(args)
        clips = load_clips(args.audio)
        progress = Progress(not args.no_progress)
        ctx = Context(args, clips, progress)
        result = get(args.mode).run(ctx)
    except (ValueError, TargetError, ServerStartError, SpeechError, OSError) as exc:
        if progress is not None:
            progress.close()
        print(f"earshot loadtest: error: {exc}", file=sys.stderr)
        return 2
    progress.close()
    settings = {"server": args.server, "seconds": args.seconds, "bound_s": args.bound,
                "wer_bound": args.wer_bound, "partials": not args.no_partials,
                "endpoint_ms": args.endpoint_ms, "utterances": len(clips),
                "repeats": args.repeats if args.mode == "sweep" else 1}
    doc = document(result, command, settings)
    if args.json:
        write_json(args.json, doc)
    if args.plot:
        plot.write_png(doc, args.plot)
    print(summary(doc))
    return 0 if doc["passed"] else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="earshot loadtest", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run(args)
