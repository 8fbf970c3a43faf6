"""`earshot-server token`: show the server's token, or rotate it.

Clients on other hosts present this token (the desktop app asks for it once per server).
`--rotate` writes a fresh one; a running server picks it up within a second, so clients
must be given the new token (sessions already open carry on).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edge_server.lan.auth import (
    default_token_file,
    load_or_create_token,
    new_token,
    read_token,
    write_token,
)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="earshot-server token", description=__doc__.split("\n")[0])
    p.add_argument("--token-file", type=Path, help="token file (default: the server's default)")
    p.add_argument("--rotate", action="store_true", help="replace the token with a new one")
    p.add_argument("--quiet", action="store_true", help="print the token only")
    args = p.parse_args(argv)
    path = args.token_file or default_token_file()
    try:
        if args.rotate:
            write_token(path, new_token())
            token = read_token(path)
        else:
            token = load_or_create_token(path)
    except (OSError, ValueError) as exc:
        print(f"earshot-server token: error: {exc}", file=sys.stderr)
        return 1
    if args.quiet:
        print(token)
    else:
        action = "new token" if args.rotate else "token"
        print(f"{action}: {token}\n(kept in {path}; clients on other hosts must present it)")
    return 0
