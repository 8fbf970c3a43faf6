"""`earshot` with no subcommand: the desktop window, or a scripted end-to-end run of it.

    earshot [--server URL|local] [--token T] [--insert off|type|paste] [--hotkey COMBO]
            [--hotkey-mode toggle|hold] [--minimized|--hidden]
    earshot --audio-file FILE [--fast] --quit-when-done [--transcript-out PATH]
            [--screenshot PNG] [--server URL|local] [--recover] [--start-on-hotkey]
    earshot --toggle | --start | --stop | --show     (to the running app)

Without a display, without PySide6, or without a model it says so in one line (console) or
in the window, instead of crashing. `--audio-file` feeds the file through the same capture
interface as a microphone (real-time pace; `--fast`: as fast as the server takes it).

One app per user: `--toggle/--start/--stop/--show` are sent to the running app
(desktop/remote_control.py) before any window is built: its reply is printed, exit 0;
exit 1 with "earshot: error: Earshot is not running" when none runs. A second plain
`earshot` brings the running window forward and exits 0. Scripted runs (`--audio-file`,
`--recover`, `--quit-when-done`) always run on their own.
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
    p.add_argument("--insert", choices=("off", "type", "paste"),
                   help="put each final where the cursor is, in the focused app: typed or "
                   "pasted (default: the preference, off unless set)")
    p.add_argument("--hotkey", metavar="COMBO",
                   help="global hotkey for this run, e.g. '<ctrl>+<alt>+d' or Ctrl+Alt+D")
    p.add_argument("--hotkey-mode", choices=("toggle", "hold"),
                   help="toggle: press to start and to stop; hold: push-to-talk")
    p.add_argument("--start-on-hotkey", action="store_true",
                   help="with --audio-file: start that dictation when the global hotkey (or "
                   "`earshot --toggle`) is pressed, instead of at once")
    shown = p.add_mutually_exclusive_group()
    shown.add_argument("--minimized", action="store_true",
                       help="start with only the tray icon (the window when there is no tray)")
    shown.add_argument("--hidden", action="store_true",
                       help="never show the window unless asked (tray, `earshot --show`)")
    remote = p.add_mutually_exclusive_group()
    for command in ("toggle", "start", "stop", "show"):
        remote.add_argument(f"--{command}", dest="remote", action="store_const",
                            const=command, help=f"{command} dictation in the running app"
                            if command != "show" else "bring the running app's window forward")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def _remote(command: str) -> int:
    """Send `command` to the running app: its reply on stdout, exit 0; exit 1 when no app
    runs or it answers with an error."""
    try:
        from desktop.remote_control import NotRunning, send_command
    except ImportError:
        print("earshot: error: the desktop app needs PySide6: pip install 'earshot[desktop]'",
              file=sys.stderr)
        return 1
    try:
        reply = send_command(command)
    except (NotRunning, TimeoutError) as exc:
        print(f"earshot: error: {exc}", file=sys.stderr)
        return 1
    if reply.startswith("error:"):
        print(f"earshot: {reply}", file=sys.stderr)
        return 1
    print(reply)
    return 0


def _already_running() -> bool:
    """A plain launch while this user's app runs: bring its window forward instead."""
    from desktop.remote_control import NotRunning, send_command

    try:
        reply = send_command("show", timeout_s=2.0)
    except (NotRunning, TimeoutError):
        return False
    print(f"earshot: already running ({reply})")
    return True


def _display_problem() -> str | None:
    if not sys.platform.startswith("linux") or os.environ.get("QT_QPA_PLATFORM"):
        return None
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return None
    return ("no display found (DISPLAY and WAYLAND_DISPLAY are unset). Run Earshot in a "
            "desktop session, use `earshot transcribe FILE`, or set QT_QPA_PLATFORM=offscreen "
            "for a headless run.")


def launch(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.remote:
        return _remote(args.remote)
    if args.start_on_hotkey and args.audio_file is None:
        parser.error("--start-on-hotkey needs --audio-file")
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
    from desktop.hotkey import parse_combination

    if args.hotkey is not None:
        try:
            args.hotkey = parse_combination(args.hotkey)
        except ValueError as exc:
            parser.error(f"--hotkey: {exc}")
    scripted = args.audio_file is not None or args.recover or args.quit_when_done
    if not scripted and _already_running():
        return 0
    from desktop.run import DesktopRun

    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("Earshot")
    if not args.quit_when_done:  # a missing model: offer to download it (never when scripted)
        from desktop.first_run import ensure_default_model

        ensure_default_model(None, args.model)
    run = DesktopRun(app, args, Path(tempfile.mkdtemp(prefix="earshot-")))
    return run.exec()
