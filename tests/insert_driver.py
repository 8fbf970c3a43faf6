"""Drive a real TextInserter on an X display, for tests that run Qt offscreen themselves.

    python -m tests.insert_driver --mode type|paste [--no-commands] [--settle-ms N]
        [--gap-ms N] [--preceding TEXT]  < finals.json

stdin: a JSON list of the finals' texts. The driver starts a QGuiApplication (xcb: DISPLAY
and QT_QPA_PLATFORM=xcb in its environment; it shows no window, so it never takes the
focus), calls `begin()`, feeds the finals one by one `--gap-ms` apart on the GUI thread's
event loop (as the app receives them), waits until the inserter is idle (paste mode: the
clipboard restored), and prints one JSON line:

    {"inserted": [...], "clipboard": "...", "clipboard_formats": [...], "errors": [...]}

`clipboard` is the clipboard's text after the end (paste mode: what was restored; the
driver then owns the clipboard). Exit code 0, or 1 when an InsertionError was raised.
"""

from __future__ import annotations

import argparse
import json
import sys

from PySide6.QtCore import QTimer
from PySide6.QtGui import QGuiApplication

from desktop.insert import InsertionError, TextInserter


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.insert_driver")
    ap.add_argument("--mode", required=True)
    ap.add_argument("--no-commands", dest="commands", action="store_false")
    ap.add_argument("--settle-ms", type=int)
    ap.add_argument("--gap-ms", type=int, default=30)
    ap.add_argument("--preceding")
    args = ap.parse_args(argv)
    finals = json.loads(sys.stdin.read())

    app = QGuiApplication([sys.argv[0]])
    inserter = TextInserter(args.mode, args.commands, settle_ms=args.settle_ms)
    errors: list[str] = []
    inserter.on_error = lambda exc: errors.append(str(exc))
    todo = list(finals)

    def finish() -> None:
        cb = QGuiApplication.clipboard()
        mime = cb.mimeData()
        print(json.dumps({"inserted": inserter.inserted, "clipboard": cb.text(),
                          "clipboard_formats": list(mime.formats()) if mime else [],
                          "errors": errors}, ensure_ascii=False), flush=True)
        app.exit(1 if errors else 0)

    def step() -> None:
        try:
            if todo:
                inserter.insert_final(todo.pop(0))
                QTimer.singleShot(args.gap_ms, step)
                return
        except InsertionError as exc:
            errors.append(str(exc))
        inserter.when_idle(finish)

    def start() -> None:
        try:
            inserter.begin(args.preceding)
        except InsertionError as exc:
            errors.append(str(exc))
            finish()
            return
        step()

    QTimer.singleShot(0, start)
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
