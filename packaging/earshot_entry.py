"""Entry point of the frozen (PyInstaller) `earshot` executable.

The bundle has one executable, and Earshot starts child processes with it:
- worker processes (multiprocessing 'spawn', edge_server/workers.py): the child is started
  as `earshot --multiprocessing-fork ...`; `multiprocessing.freeze_support()` must run
  first thing and turns such a start into the worker instead of a second app;
- the upload decoder zygote (edge_server/upload_decoder.py) runs
  `sys.executable -m edge_server.decoder_zygote FD`; a frozen executable has no `-m`, so
  the modules listed in HIDDEN_MODULES are run here the way `python -m` would.
Everything else is the `earshot` command (desktop/cli.py). Runs on the main thread only.
"""

from __future__ import annotations

import multiprocessing
import runpy
import sys

# the only modules a frozen `earshot -m MODULE ...` may run (children Earshot starts itself)
HIDDEN_MODULES = frozenset({"edge_server.decoder_zygote"})


def main() -> int:
    multiprocessing.freeze_support()  # a spawned worker runs here and exits
    argv = sys.argv[1:]
    if len(argv) >= 2 and argv[0] == "-m":
        if argv[1] not in HIDDEN_MODULES:
            print(f"earshot: error: -m {argv[1]}: not a module this bundle runs",
                  file=sys.stderr)
            return 2
        sys.argv = [sys.executable, *argv[2:]]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        return 0
    from desktop.cli import main as earshot_main

    return earshot_main(argv)


if __name__ == "__main__":
    sys.exit(main())
