"""One run of the desktop app: builds the window and controller, starts the local server,
offers crash recovery, and drives a scripted `--audio-file` dictation to its end.
GUI thread only.

Dictate anywhere (issue 13): the global hotkey (desktop/hotkey.py; on Wayland the desktop
portal, desktop/wayland_shortcuts.py), `earshot --toggle` (desktop/remote_control.py)
and the tray menu (desktop/tray.py) all start/stop through the window's one entry point.
With an insert mode ("type"/"paste") every final of a dictation started here (not of a
recovered one) is given to `TextInserter.insert_final` in order as it arrives; partials
never. A scripted run with insertion shows its window without activating it and without
accepting the focus, so the focused application keeps it; it quits only once the
inserter is idle (paste mode: the clipboard restored). The hotkey and the remote control
run in interactive runs and in `--start-on-hotkey` runs; other scripted runs have neither.
Preferences (desktop/preferences.py) give the defaults; command-line flags override them
for the run. A scripted run inserts text only when its command line says `--insert`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path

from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QApplication, QDialog, QMessageBox

from desktop.capture import FileSource
from desktop.controller import DictationController
from desktop.history import History
from desktop.hotkey import GlobalHotkey, HotkeyUnavailable, display_name, is_wayland_session
from desktop.insert import InsertionError, TextInserter, available_modes
from desktop.journal import Journal, JournalEntry
from desktop.preferences import Preferences
from desktop.remote_control import RemoteControl
from desktop.tray import NO_TRAY, TrayIcon
from desktop.widgets.preferences_dialog import PreferencesDialog
from desktop.window import MainWindow

log = logging.getLogger(__name__)
CLIPBOARD_LINGER_MS = 500
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

        self.scripted = bool(args.audio_file is not None or args.recover or args.quit_when_done)
        saved = Preferences.load(self.window.settings)
        insert = args.insert or ("off" if self.scripted else None)  # scripts say so
        self.prefs = replace(saved, **{k: v for k, v in (
            ("hotkey", args.hotkey), ("hotkey_mode", args.hotkey_mode),
            ("insert_mode", insert)) if v is not None})
        self.inserter = TextInserter(self.prefs.insert_mode, self.prefs.spoken_commands)
        self.inserter.on_error = self._on_insert_error
        self._insert_active = False  # this dictation's finals go to the cursor
        self.controller.final.connect(self._insert_final)
        self.window.dictation_started.connect(self._on_dictation_started)
        self.window.preferences_requested.connect(self.open_preferences)
        self._awaiting_hotkey = False  # --start-on-hotkey: the file waits for a press
        self._start_requested = False  # pressed before the app was ready
        self._ready = False
        self.hotkey = None  # GlobalHotkey or PortalShortcuts, when listening
        self.hotkey_problem: str | None = None
        self.remote: RemoteControl | None = None
        self.tray = TrayIcon(self.controller, self.window.server_picker,
                             toggle=self.toggle, show_window=self.show_window,
                             preferences=self.open_preferences, quit=self.quit,
                             hotkey_name=display_name(self.prefs.hotkey))
        if args.quit_when_done:  # a scripted run must end, even on a bug in a slot
            sys.excepthook = self._crash

    def _crash(self, kind, value, tb) -> None:
        sys.__excepthook__(kind, value, tb)
        print(f"earshot: error: internal error: {value}", file=sys.stderr)
        self._quit(1)

    def exec(self) -> int:
        interactive = not self.scripted or self.args.start_on_hotkey
        if interactive:
            self._listen_remote()
            self._start_hotkey()
        tray = self.tray.show() if not self.scripted else False
        if tray:  # closing the window leaves the app in the tray; its menu has Quit
            self.app.setQuitOnLastWindowClosed(False)
            self.window.hide_on_close = True
        self._show_at_start(tray)
        self.controller.start_local_server()
        if self.args.server in (None, "auto"):
            self.controller.start_discovery()
        code = self.app.exec()
        if self.hotkey is not None:
            self.hotkey.stop()
        if self.remote is not None:
            self.remote.close()
        self.tray.hide()
        self.controller.shutdown()
        self.history.close()
        return self.exit_code or code

    def _show_at_start(self, tray: bool) -> None:
        """--hidden: not shown. Scripted with insertion: shown, never activated, never
        focusable. Minimised (flag or preference): only the tray icon, or a minimised
        window when there is no tray."""
        if self.args.hidden:
            return
        if self.scripted and self.prefs.insert_mode != "off":
            self.window.setAttribute(Qt.WidgetAttribute.WA_ShowWithoutActivating, True)
            self.window.setWindowFlag(Qt.WindowType.WindowDoesNotAcceptFocus, True)
            self.window.show()
            return
        minimized = self.args.minimized or (self.prefs.start_minimized and not self.scripted)
        if not tray and not self.scripted:
            log.info("%s", NO_TRAY)
            if minimized or not self.window.settings.value("tray/missing_noted", False,
                                                           type=bool):
                self.window.show_message(NO_TRAY)  # once, or when it matters now
                self.window.settings.setValue("tray/missing_noted", True)
        if minimized and tray:
            return
        if minimized:
            self.window.showMinimized()
        else:
            self.window.show()

    def _listen_remote(self) -> None:
        self.remote = RemoteControl(self.remote_command)
        if not self.remote.listen():
            log.warning("another Earshot already listens for `earshot --toggle`; this one "
                        "does not")
            self.remote = None

    def _start_hotkey(self) -> None:
        """Listen for the global hotkey; when it cannot work, say why once (the window's
        message line; stderr in a --start-on-hotkey run)."""
        if self.hotkey is not None:
            self.hotkey.stop()
            self.hotkey = None
        hotkey_cls = GlobalHotkey
        if is_wayland_session():
            from desktop.wayland_shortcuts import PortalShortcuts

            hotkey_cls = PortalShortcuts
        hotkey = hotkey_cls(self.prefs.hotkey, self.prefs.hotkey_mode, parent=self.window)
        hotkey.activated.connect(self.toggle)
        hotkey.held.connect(self._on_held)
        if hasattr(hotkey, "unavailable"):  # the portal: its answer comes later
            hotkey.unavailable.connect(self._hotkey_unavailable)
            hotkey.bound.connect(self._hotkey_bound)
        try:
            hotkey.start()
        except HotkeyUnavailable as exc:
            self._hotkey_unavailable(str(exc))
            return
        self.hotkey = hotkey
        self.hotkey_problem = None

    def _hotkey_bound(self, trigger: str) -> None:
        """The desktop granted the portal shortcut; `trigger` is the keys it shows."""
        if trigger:
            self.tray.hotkey_name = trigger
            self.tray.set_state(self.tray.state, self.tray.detail)

    def _hotkey_unavailable(self, reason: str) -> None:
        if self.hotkey is not None:  # the portal refused after all
            self.hotkey.stop()
        self.hotkey = None
        self.hotkey_problem = f"Global hotkey unavailable: {reason}"
        log.warning("%s", self.hotkey_problem)
        self.window.show_message(self.hotkey_problem)
        if self.args.start_on_hotkey:
            print(f"earshot: warning: {self.hotkey_problem}", file=sys.stderr, flush=True)

    # ---- the shared start/stop entry point ---------------------------------------------
    def toggle(self) -> None:
        """Hotkey (toggle mode), tray menu, `earshot --toggle`: start or stop."""
        if not self._ready:  # the speech engine is still loading: start once it is ready
            self._start_requested = not self._start_requested
            return
        self.window.toggle_recording()

    def _on_held(self, down: bool) -> None:
        """Hotkey in hold (push-to-talk) mode."""
        if not self._ready:
            self._start_requested = down
            return
        if down:
            self.window.start_recording()
        else:
            self.window.stop_recording()

    def remote_command(self, command: str) -> str:
        """`earshot --toggle|--start|--stop|--show`: act, and say what happened."""
        if command == "show":
            self.show_window()
            return "ok: window shown"
        recording = self.controller.is_recording
        if command == "toggle":
            command = "stop" if recording else "start"
        if command == "stop":
            if not recording:
                if self._start_requested:
                    self._start_requested = False
                    return "ok: the start asked for is cancelled"
                return "ok: not dictating"
            self.window.stop_recording()
            return "ok: dictation stopped"
        if recording:
            return "ok: already dictating"
        if not self._ready:
            self._start_requested = True
            return "ok: dictation starts once the speech engine is ready"
        if self.window.start_recording():
            return "ok: dictation started"
        return f"error: {self.window.message.text() or 'dictation could not start'}"

    def show_window(self) -> None:
        self.window.showNormal()
        self.window.raise_()
        self.window.activateWindow()

    def open_preferences(self) -> None:
        dialog = PreferencesDialog(self.prefs, available_modes(), self.window)
        if dialog.exec() != QDialog.DialogCode.Accepted:
            return
        self.apply_preferences(dialog.preferences())

    def apply_preferences(self, prefs: Preferences) -> None:
        """Save `prefs` and use them now: a new inserter (from the next dictation on) and
        the hotkey re-registered."""
        prefs.save(self.window.settings)
        old, self.prefs = self.prefs, prefs
        if (prefs.insert_mode, prefs.spoken_commands) != (old.insert_mode,
                                                          old.spoken_commands):
            self.inserter = TextInserter(prefs.insert_mode, prefs.spoken_commands)
            self.inserter.on_error = self._on_insert_error
        if (prefs.hotkey, prefs.hotkey_mode) != (old.hotkey, old.hotkey_mode):
            self.tray.hotkey_name = display_name(prefs.hotkey)
            if self.hotkey is not None or self.hotkey_problem is not None:
                self._start_hotkey()

    def quit(self) -> None:
        """Tray menu's Quit: as closing the window without a tray (asks when a dictation
        runs)."""
        keep, self.window.hide_on_close = self.window.hide_on_close, False
        if self.window.close():
            self._quit(self.exit_code)
        else:  # the user chose to go on dictating
            self.window.hide_on_close = keep

    # ---- text at the cursor ------------------------------------------------------------
    def _on_dictation_started(self) -> None:
        self._awaiting_hotkey = self._awaiting_hotkey and self.window.has_pending_source
        self._insert_active = self.current is None and self.prefs.insert_mode != "off"
        if not self._insert_active:
            return
        try:
            self.inserter.begin()
        except InsertionError as exc:
            self._insert_active = False
            self._on_insert_error(exc)

    def _insert_final(self, _index: int, _start: float, _end: float, text: str,
                      error: str) -> None:
        if not self._insert_active or error or not text.strip():
            return
        try:
            self.inserter.insert_final(text)
        except InsertionError as exc:
            self._on_insert_error(exc)

    def _on_insert_error(self, exc: InsertionError) -> None:
        message = f"Text not inserted: {exc}"
        self.window.show_message(message)
        if self.args.quit_when_done:
            print(f"earshot: error: {message}", file=sys.stderr)
            self.exit_code = 1

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
            if self.args.start_on_hotkey:
                self.window.set_pending_source(source, self.args.audio_file.name)
                self._awaiting_hotkey = True
            else:
                self.queue.append((source, self.args.audio_file.name, None))
        if self.args.quit_when_done and not self.queue and not self._awaiting_hotkey:
            self._quit(0)
            return
        self._ready = True
        if self.args.start_on_hotkey:
            how = ([display_name(self.prefs.hotkey)] if self.hotkey is not None else []) + [
                "`earshot --toggle`"]
            print(f"earshot: ready: {' or '.join(how)} starts the dictation", flush=True)
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
            if self._start_requested and not self.controller.is_recording:
                self._start_requested = False
                self.window.start_recording()
            elif self.args.quit_when_done and not self._awaiting_hotkey:
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
        """Quit with `code` once the inserter is idle (a pasted text is fetched from this
        process after Ctrl+V, and the clipboard is put back before we go). In paste mode
        the app then stays CLIPBOARD_LINGER_MS longer: on X11 the restored clipboard is
        served by this process, and a clipboard manager needs a moment to take it over
        (else it would vanish with us)."""
        self.exit_code = code
        linger = CLIPBOARD_LINGER_MS if self.inserter.mode == "paste" else 0
        self.inserter.when_idle(lambda: QTimer.singleShot(linger, self.app.quit))
