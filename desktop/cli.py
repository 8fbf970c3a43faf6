"""The `earshot` command: the desktop app, plus subcommands that need no Qt.

`earshot` alone starts the desktop app (Qt is imported only then). Subcommands:
transcribe, models, eval, servers, pair, unpair. Known failures print one line
`earshot: error: ...` and exit 1; usage errors exit 2.
"""

from __future__ import annotations

import argparse
import logging
import sys

from desktop.commands import eval_cmd, models_cmd, servers_cmd, transcribe_cmd
from edge_server.audio import AudioError
from edge_server.engine import EngineError
from loadtest import cli as loadtest_cli
from models.catalog import UnknownModelError
from models.fetch import FetchError
from models.store import ModelNotReadyError

KNOWN_ERRORS = (AudioError, EngineError, ModelNotReadyError, FetchError, UnknownModelError,
                ValueError, OSError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="earshot", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    transcribe_cmd.add_parser(sub)
    models_cmd.add_parser(sub)
    eval_cmd.add_parser(sub)
    servers_cmd.add_parsers(sub)
    loadtest_cli.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    if argv[:1] == ["--version"]:
        from edge_server.version import version

        print(f"earshot {version()}")
        return 0
    if not argv or (argv[0].startswith("--") and argv[0] not in ("--help", "--verbose")):
        from desktop.app_launcher import launch

        return launch(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command is None:
        from desktop.app_launcher import launch

        return launch([])
    try:
        return args.func(args)
    except KNOWN_ERRORS as exc:
        print(f"earshot: error: {exc}", file=sys.stderr)
        return 1
    except MemoryError:
        print("earshot: error: out of memory", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
