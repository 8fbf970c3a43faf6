"""Entry point of the desktop window (`earshot` with no subcommand).

The Qt dictation window is built on the streaming server and arrives with it; until then
this says so plainly instead of failing inside Qt.
"""

from __future__ import annotations

import sys


def launch(argv: list[str]) -> int:
    print("earshot: the desktop window is not available in this build yet; "
          "use `earshot transcribe FILE` or `earshot --help`.", file=sys.stderr)
    return 2
