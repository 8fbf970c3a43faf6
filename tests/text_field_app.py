"""Another application's text field, for the tests that type into "whatever has the focus".

    python -m tests.text_field_app TITLE OUT_PATH [--clipboard TEXT] [--no-keep-focus]

A window titled TITLE holding one QPlainTextEdit (the keyboard focus inside the window).
- Its whole text is written to OUT_PATH (UTF-8, atomically: a temporary file renamed over
  it) at start (empty) and on every change, so a test can poll the file.
- Once the window is shown and holds the X input focus it prints `ready` to stdout.
- Keeping the focus: bare Xvfb has no window manager, so the window takes the X input
  focus itself (XSetInputFocus through python-xlib). Whenever it loses it, it prints
  `focus-lost` and (unless `--no-keep-focus`) takes it back after 50 ms; a test can
  assert that nothing stole it.
- `--clipboard TEXT`: the app puts TEXT on the clipboard at start (it then owns the
  clipboard, as another application would), before printing `ready`.
- It quits on SIGTERM or when its stdin closes (so it never outlives its test).

Runs with `QT_QPA_PLATFORM=xcb` and `DISPLAY` set (tests.xdisplay.XServer.env()).

From a test, `TextField(server, out_path, title)` starts it, waits for `ready`, gives it
the focus with xdotool, and offers `text()`, `wait_text(expected)`, `wait_output(s)` and
`close()` (returns all it printed). This module imports Qt only in the app itself.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".field-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def say(line: str) -> None:
    print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    from PySide6.QtCore import QTimer
    from PySide6.QtGui import QGuiApplication
    from PySide6.QtWidgets import QApplication, QPlainTextEdit

    ap = argparse.ArgumentParser(prog="python -m tests.text_field_app")
    ap.add_argument("title")
    ap.add_argument("out", type=Path)
    ap.add_argument("--clipboard", help="put this text on the clipboard at start")
    ap.add_argument("--no-keep-focus", dest="keep_focus", action="store_false")
    args = ap.parse_args(argv)

    app = QApplication([sys.argv[0]])
    edit = QPlainTextEdit()
    edit.setWindowTitle(args.title)
    edit.resize(600, 300)
    write_atomic(args.out, "")
    edit.textChanged.connect(lambda: write_atomic(args.out, edit.toPlainText()))

    state = {"ready": False}

    xconn = None

    def take_focus() -> None:
        # No WM, so nobody gives the focus: set it (time CurrentTime: Qt's own request
        # carries its last event time, which the server ignores after a later change)
        nonlocal xconn
        edit.activateWindow()
        edit.setFocus()
        if QGuiApplication.platformName() == "xcb":
            import Xlib.display
            from Xlib import X

            xconn = xconn or Xlib.display.Display()
            xconn.set_input_focus(int(edit.winId()), X.RevertToParent, X.CurrentTime)
            xconn.sync()

    def on_focus_window(win: object) -> None:
        if win is None and state["ready"]:
            say("focus-lost")
            if args.keep_focus:
                QTimer.singleShot(50, take_focus)

    def check_ready() -> None:
        if edit.isActiveWindow() and edit.hasFocus():
            if args.clipboard is not None:
                QGuiApplication.clipboard().setText(args.clipboard)
            state["ready"] = True
            say("ready")
        else:
            take_focus()
            QTimer.singleShot(50, check_ready)

    app.focusWindowChanged.connect(on_focus_window)
    edit.show()
    take_focus()
    QTimer.singleShot(0, check_ready)

    # quit on SIGTERM (Python handlers run only when the interpreter gets control: poll)
    signal.signal(signal.SIGTERM, lambda *_: app.quit())
    tick = QTimer()
    tick.timeout.connect(lambda: None)
    tick.start(100)

    def watch_stdin() -> None:
        try:
            while sys.stdin.buffer.read(4096):
                pass
        except (OSError, ValueError):
            pass
        os.kill(os.getpid(), signal.SIGTERM)  # handled on the GUI thread (see above)

    if sys.stdin is not None and not sys.stdin.isatty():
        threading.Thread(target=watch_stdin, daemon=True).start()
    return app.exec()


class TextField:
    """The app above in its own process (test side): started, ready, and focused."""

    def __init__(self, server, path: Path, title: str, clipboard: str | None = None,
                 keep_focus: bool = True, focus: bool = True) -> None:
        """`server`: a tests.xdisplay.XServer. Raises AssertionError (with the app's
        output) when the app does not get ready within 30 s."""
        from tests import xdisplay

        self.path = path
        self.title = title
        self.output = ""
        cmd = [sys.executable, "-m", "tests.text_field_app", title, str(path)]
        if clipboard is not None:
            cmd += ["--clipboard", clipboard]
        if not keep_focus:
            cmd.append("--no-keep-focus")
        self.proc = subprocess.Popen(cmd, env=server.env(), cwd=REPO, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            self.wait_output("ready\n", 30)
            self.window = xdisplay.find_window(title, server.display)
            if focus:
                xdisplay.focus(self.window, server.display)
        except BaseException:
            self.close()
            raise

    def _read(self, timeout: float) -> bool:
        """Read what the app printed within `timeout`; False once it has ended."""
        assert self.proc.stdout is not None
        if self.proc.stdout.closed:
            return False
        fd = self.proc.stdout.fileno()
        if select.select([fd], [], [], timeout)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                return False
            self.output += chunk.decode(errors="replace")
        return True

    def wait_output(self, want: str, timeout: float = 10.0) -> str:
        """All the app printed so far, once it contains `want` (AssertionError if not)."""
        deadline = time.monotonic() + timeout
        while want not in self.output:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"text field app: no {want!r} in {timeout} s; "
                                     f"output: {self.output[-2000:]}")
            if not self._read(min(left, 0.2)):
                raise AssertionError(f"text field app ended ({self.proc.wait()}) without "
                                     f"{want!r}: {self.output[-2000:]}")
        return self.output

    def text(self) -> str:
        return self.path.read_text(encoding="utf-8")

    def wait_text(self, expected: str, timeout: float = 10.0) -> str:
        """The field's text once it equals `expected`, or whatever it is after `timeout`."""
        deadline = time.monotonic() + timeout
        got = self.text()
        while got != expected and time.monotonic() < deadline:
            time.sleep(0.05)
            got = self.text()
        return got

    def close(self) -> str:
        """Stop the app (stdin closed; killed after 10 s); return all it printed.
        Idempotent."""
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout is not None and not self.proc.stdout.closed:
            self.output += self.proc.stdout.read().decode(errors="replace")
            self.proc.stdout.close()
        return self.output

    def __enter__(self) -> TextField:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    sys.exit(main())
