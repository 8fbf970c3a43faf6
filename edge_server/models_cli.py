"""`earshot-server models list|fetch [ID...]`: the model commands on a headless box.

The same subcommands as `earshot models` (desktop/commands/models_cmd.py, which needs only
models/*), reachable from `earshot-server`, because `earshot` itself imports the desktop
app's pairing code (keyring), which a GPU box install (`earshot[gpu]`) does not carry.
Known failures print one line `earshot-server: error: ...` and exit 1.
"""

from __future__ import annotations

import argparse
import sys

from desktop.commands import models_cmd
from models.catalog import UnknownModelError
from models.fetch import FetchError
from models.store import ModelNotReadyError


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="earshot-server")
    sub = parser.add_subparsers(dest="command", required=True)
    models_cmd.add_parser(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (FetchError, ModelNotReadyError, UnknownModelError, ValueError, OSError) as exc:
        print(f"earshot-server: error: {exc}", file=sys.stderr)
        return 1
