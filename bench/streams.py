"""Streams through the server at fixed levels: a thin wrapper over `earshot loadtest sweep`
(loadtest/), kept for bench/gpu_check.py and old habits. Use `earshot loadtest` instead.

    python -m bench.streams sweep --streams 8,16,24,32 [--seconds 45] [--repeats 1]
                                  [--workers 1 --threads 2] [--server-config C] [--json PATH]

Each level runs on a fresh local `earshot-server` (see loadtest/modes/sweep.py); the JSON
is a list of the sweep's level rows (loadtest/report.py), with the former key names
`p50_latency_s`, `p95_latency_s` (endpoint due -> final) added. Exit status 0 unless the
run could not be made: a level over the latency bound is data here, not a failure. The
former `single`, `saturate` and `gateway` modes are gone (`single` is `--streams 1`).
Never imports tests/.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from bench.models_env import default_models_dir
from loadtest.cli import add_arguments
from loadtest.context import Context, Progress
from loadtest.modes import sweep
from loadtest.report import summary
from loadtest.speech import load_clips


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=("sweep",))
    ap.add_argument("--streams", default="8,16,24,32", help="levels, comma-separated")
    ap.add_argument("--seconds", type=float, default=45.0, help="speech per stream")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--server-config", type=Path, help="TOML settings for the server")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    os.environ.setdefault("EARSHOT_MODELS_DIR", default_models_dir())
    lt = argparse.ArgumentParser()
    add_arguments(lt)
    lt_args = lt.parse_args(
        ["sweep", "--levels", args.streams, "--seconds", str(args.seconds), "--repeats",
         str(args.repeats), "--workers", str(args.workers), "--threads", str(args.threads),
         "--no-progress"]
        + (["--server-config", str(args.server_config)] if args.server_config else []))
    result = sweep.run(Context(lt_args, load_clips(), Progress(False)))
    rows = [r | {"p50_latency_s": r["p50_final_s"], "p95_latency_s": r["p95_final_s"]}
            for r in result["levels"]]
    print(summary({**result, "command": " ".join(sys.argv), "settings": {}}))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
