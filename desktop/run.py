"""One run of the desktop app: builds the window and controller, starts the local server,
offers crash recovery, and drives a scripted `--audio-file` dictation to its end.
GUI thread only.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication, QMessageBox

from desktop.capture import FileSource
from desktop.controller import DictationController
from desktop.history import History
from desktop.journal import Journal, JournalEntry
from desktop.window import MainWindow

log = logging.getLogger(__name__)
FORMATS = {".txt": "txt", ".srt": "srt", ".vtt": "vtt", ".json": "json"}


class DesktopRun:
    def __init__(self, app: QApplication, args: argparse.Namespace, scratch: Path) -> None:
        self.app = app
        self.args = args
        self.scratch = scratch
        self.exit_code = 0
        self.history = History()
        self.journal = Journal()
        self.controller = DictationController(self.history, self.journal, model=args.model)
        self.window = MainWindow(self.controller)
        if args.server and args.server != "local":
            self.window.set_server(args.server, args.token)
        elif args.server in ("local", "auto"):
            self.window.set_server(None, mode=args.server)
        self.queue: list[tuple[FileSource, str, JournalEntry | None]] = []
        self.current: JournalEntry | None = None
        self.controller.local_server.connect(self._on_local_server)
        # "auto" looks at the LAN before the first scripted dictation, so it can pick a box
        self._awaiting_discovery = args.server in (None, "auto")
        self._local_ready = False
        self.controller.servers_found.connect(self._on_first_discovery)
        self.controller.finished.connect(self._on_finished)
        self.controller.failed.connect(self._on_failed)
        self.controller.start_failed.connect(self._on_start_failed)
        if args.quit_when_done:  # a scripted run must end, even on a bug in a slot
            sys.excepthook = self._crash

    def _crash(self, kind, value, tb) -> None:
        sys.__excepthook__(kind, value, tb)
        print(f"earshot: error: internal error: {value}", file=sys.stderr)
        self._quit(1)

    def exec(self) -> int:
        self.window.show()
        self.controller.start_local_server()
        if self.args.server in (None, "auto"):
            self.controller.start_discovery()
        code = self.app.exec()
        self.controller.shutdown()
        self.history.close()
        return self.exit_code or code

    # ---- startup -------------------------------------------------------------------------
    def _on_first_discovery(self, _servers: list) -> None:
        if self._awaiting_discovery:
            self._awaiting_discovery = False
            if self._local_ready:
                self._begin()

    def _on_local_server(self, status: str) -> None:
        if status == "starting":
            return
        if status != "ready" and self.args.quit_when_done:
            print(f"earshot: error: local speech engine: {status}", file=sys.stderr)
            self._quit(1)
            return
        self._local_ready = True
        if not self._awaiting_discovery:
            self._begin()

    def _begin(self) -> None:
        """Recovery and scripted dictations, once the local server (and the first look
        at the LAN, with "auto") are done."""
        self._plan_recovery()
        if self.args.audio_file is not None:
            source = FileSource(self.args.audio_file, realtime=not self.args.fast)
            self.queue.append((source, self.args.audio_file.name, None))
        if self.args.quit_when_done and not self.queue:
            self._quit(0)
            return
        self._next()

    def _plan_recovery(self) -> None:
        entries = self.journal.unfinished()
        if not entries:
            return
        if not self.args.recover:
            if self.args.quit_when_done:
                return
            answer = QMessageBox.question(
                self.window, "Earshot",
                f"{len(entries)} dictation(s) did not finish last time (the app stopped "
                "while recording). Transcribe them now?")
            if answer != QMessageBox.StandardButton.Yes:
                return
        for entry in entries:
            wav = self.journal.export_recovery(entry)  # next to the entry, deleted with it
            title = f"Recovered dictation {str(entry.created)[:16].replace('T', ' ')}"
            self.queue.append((FileSource(wav, realtime=False), title, entry))

    # ---- dictations ----------------------------------------------------------------------
    def _next(self) -> None:
        if not self.queue:
            if self.args.quit_when_done:
                self._finish_scripted()
            return
        source, title, entry = self.queue.pop(0)
        self.current = entry
        self.window.start_dictation(source, title)  # then `finished` or `start_failed`

    def _on_start_failed(self, _message: str) -> None:
        """A dictation that never connected (`failed` printed why): a scripted run ends
        with 1; otherwise the next queued one starts (this one's journal entry is kept)."""
        self.current = None
        if self.args.quit_when_done:
            self._quit(1)
        else:
            QTimer.singleShot(0, self._next)

    def _on_finished(self, dictation_id: int) -> None:
        if self.current is not None:
            self.journal.mark(self.current, "recovered")
            self.current = None
        self.last_id = dictation_id
        QTimer.singleShot(0, self._next)

    def _on_failed(self, message: str) -> None:
        if self.args.quit_when_done:
            print(f"earshot: error: {message}", file=sys.stderr)
            self.exit_code = 1

    def _finish_scripted(self) -> None:
        last = getattr(self, "last_id", None)
        if self.args.transcript_out is not None and last is not None:
            fmt = FORMATS.get(self.args.transcript_out.suffix.lower(), "txt")
            self.args.transcript_out.write_text(self.history.export(last, fmt), "utf-8")
        if self.args.screenshot is not None:
            self.app.processEvents()
            self.window.grab().save(str(self.args.screenshot))
        self._quit(self.exit_code)

    def _quit(self, code: int) -> None:
        self.exit_code = code
        QTimer.singleShot(0, self.app.quit)
