"""A clipboard manager for tests on bare Xvfb (which has none).

    python -m tests.desktop.clipboard_keeper TEXT LOG_PATH

Puts TEXT on the X clipboard (owning it, as the application the user copied from would),
prints `ready`, then, like a desktop's clipboard manager, takes over every clipboard text
another program sets: it reads the text, logs it as one JSON line to LOG_PATH (flushed),
and owns that same text from then on, so the clipboard keeps its content after the program
that set it has quit. Without it, what a program put back on the clipboard would vanish
with that program. Quits when stdin closes or on SIGTERM. Needs DISPLAY and
QT_QPA_PLATFORM=xcb.
"""

from __future__ import annotations

import json
import os
import signal
import sys

from PySide6.QtCore import QSocketNotifier, QTimer
from PySide6.QtGui import QClipboard, QGuiApplication


def main() -> int:
    text, log_path = sys.argv[1], sys.argv[2]
    app = QGuiApplication(sys.argv[:1])
    clipboard = QGuiApplication.clipboard()
    log = open(log_path, "a", encoding="utf-8")  # noqa: SIM115  (open for the app's life)

    def changed(mode: QClipboard.Mode) -> None:
        if mode != QClipboard.Mode.Clipboard or clipboard.ownsClipboard():
            return
        seen = clipboard.text(QClipboard.Mode.Clipboard)
        log.write(json.dumps(seen, ensure_ascii=False) + "\n")
        log.flush()
        clipboard.setText(seen, QClipboard.Mode.Clipboard)

    clipboard.changed.connect(changed)

    def start() -> None:
        clipboard.setText(text, QClipboard.Mode.Clipboard)
        print("ready", flush=True)

    def stdin_ready() -> None:
        if not os.read(0, 4096):  # closed: the test is over
            notifier.setEnabled(False)
            app.quit()

    notifier = QSocketNotifier(0, QSocketNotifier.Type.Read)
    notifier.activated.connect(stdin_ready)
    signal.signal(signal.SIGTERM, lambda *_: QTimer.singleShot(0, app.quit))
    QTimer.singleShot(0, start)
    timer = QTimer()  # lets Python see SIGTERM while Qt's loop runs
    timer.start(200)
    timer.timeout.connect(lambda: None)
    code = app.exec()
    log.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
