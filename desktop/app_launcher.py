"""`earshot` with no subcommand: the desktop window, or a scripted end-to-end run of it.

    earshot [--server URL|local] [--token T]
    earshot --audio-file FILE [--fast] --quit-when-done [--transcript-out PATH]
            [--screenshot PNG] [--server URL|local] [--recover]

Without a display, without PySide6, or without a model it says so in one line (console) or
in the window, instead of crashing. `--audio-file` feeds the file through the same capture
interface as a microphone (real-time pace; `--fast`: as fast as the server takes it).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="earshot", description="Earshot desktop dictation app")
    p.add_argument("--server", help="edge server URL to prefer (local fallback), 'local', or "
                   "'auto' (default: a server found on the LAN, else local)")
    p.add_argument("--token", help="token of that server")
    p.add_argument("--model", help="model of the embedded local server")
    p.add_argument("--audio-file", type=Path, help="dictate from this file instead of a mic")
    p.add_argument("--fast", action="store_true", help="with --audio-file: no real-time pacing")
    p.add_argument("--quit-when-done", action="store_true",
                   help="exit after the --audio-file dictation (or --recover) is transcribed")
    p.add_argument("--transcript-out", type=Path,
                   help="write the transcript here (.txt, .srt, .vtt or .json)")
    p.add_argument("--screenshot", type=Path, help="save a PNG of the window when done")
    p.add_argument("--recover", action="store_true",
                   help="transcribe unfinished (crashed) dictations without asking")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def _display_problem() -> str | None:
    if not sys.platform.startswith("linux") or os.environ.get("QT_QPA_PLATFORM"):
        return None
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return None
    return ("no display found (DISPLAY and WAYLAND_DISPLAY are unset). Run Earshot in a "
            "desktop session, use `earshot transcribe FILE`, or set QT_QPA_PLATFORM=offscreen "
            "for a headless run.")


def launch(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    problem = _display_problem()
    if problem and args.quit_when_done:
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
    elif problem:
        print(f"earshot: error: {problem}", file=sys.stderr)
        return 1
    if args.audio_file is not None and not args.audio_file.is_file():
        print(f"earshot: error: {args.audio_file}: no such file", file=sys.stderr)
        return 1
    try:
        from PySide6.QtWidgets import QApplication
    except ImportError:
        print("earshot: error: the desktop app needs PySide6: pip install 'earshot[desktop]'",
              file=sys.stderr)
        return 1
    from desktop.run import DesktopRun

    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("Earshot")
    run = DesktopRun(app, args, Path(tempfile.mkdtemp(prefix="earshot-")))
    return run.exec()
