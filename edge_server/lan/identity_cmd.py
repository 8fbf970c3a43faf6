"""`earshot-server identity`: show the server's id and certificate fingerprint, or replace them.

The desktop app pins both when it pairs; compare the fingerprint it shows with the one
printed here. `--rotate-identity` makes a new id and certificate: every paired app then
refuses the server (a changed fingerprint looks like an impostor) until it pairs again.
A running server keeps serving its old identity until it restarts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edge_server.config import load_settings
from edge_server.lan.identity import load_or_create_identity, rotate_identity


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="earshot-server identity",
                                description=__doc__.split("\n")[0])
    p.add_argument("--config", type=Path, help="the server's TOML config (for its state_dir)")
    p.add_argument("--state-dir", type=Path, help="the server's state folder (default: "
                   "state_dir of --config, else $EARSHOT_SERVER_STATE_DIR, else the user "
                   "data folder)")
    p.add_argument("--rotate-identity", action="store_true",
                   help="replace the id and certificate (paired apps must pair again)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    args = p.parse_args(argv)
    try:
        state_dir = args.state_dir
        if state_dir is None and args.config is not None:
            configured = load_settings(args.config, {}).state_dir
            state_dir = Path(configured) if configured else None
        identity = (rotate_identity(state_dir) if args.rotate_identity
                    else load_or_create_identity(state_dir))
    except (OSError, ValueError) as exc:
        print(f"earshot-server identity: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"server_id": identity.server_id, "fingerprint": identity.fingerprint,
                          "certificate": str(identity.cert_path)}))
        return 0
    if args.rotate_identity:
        print("new identity: paired apps must pair again")
    print(f"server id:   {identity.server_id}\n"
          f"fingerprint: SHA256 {identity.fingerprint_display}\n"
          f"certificate: {identity.cert_path}")
    return 0
