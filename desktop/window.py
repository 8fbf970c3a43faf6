"""The main window: record/stop, microphone and server choice, live transcript, history.

GUI thread only. All work happens in `DictationController`; this module wires widgets to
it and remembers the user's choices (QSettings).

`toggle_recording()` / `start_recording()` / `stop_recording()` are the one entry point
shared by the Record button, the in-window shortcut, the global hotkey, the tray menu and
`earshot --toggle`. A start uses the source set by `set_pending_source()` once (a
scripted file waiting for the hotkey), else the chosen microphone. `dictation_started`
is emitted for every accepted start (the text inserter begins a new dictation there).
The Earshot menu's Preferences… emits `preferences_requested` (the run opens the dialog).
"""

from __future__ import annotations

from concurrent.futures import Future

from PySide6.QtCore import QSettings, Qt, Signal, Slot
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QMainWindow,
    QMessageBox,
    QPushButton,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from desktop.capture import AudioSource, CaptureError, MicrophoneSource, list_input_devices
from desktop.controller import DictationController, ServerChoice
from desktop.lan.pairing import PairingError, is_plain_remote, normalise_url
from desktop.lan.pins import format_fingerprint
from desktop.lan.trust import url_token_key
from desktop.widgets.history_pane import HistoryPane
from desktop.widgets.level_meter import LevelMeter
from desktop.widgets.server_status import ServerStatus
from desktop.widgets.transcript_view import TranscriptView
from edge_server.version import version

RECORD_SHORTCUT = "Ctrl+Shift+Space"


def lost_audio_text(milliseconds: float) -> str:
    return (f"{milliseconds:.0f} ms of audio lost by the sound system (the computer was too "
            "busy); silence was put in its place.")


class MainWindow(QMainWindow):
    _pairing_done = Signal(object, str, str)  # Future, url, server name (from the loop thread)
    dictation_started = Signal()  # an accepted start, from any entry point
    preferences_requested = Signal()

    def __init__(self, controller: DictationController, settings: QSettings | None = None) -> None:
        super().__init__()
        self.controller = controller
        self.settings = settings or QSettings("Earshot", "Earshot")
        self.setWindowTitle(f"Earshot {version()}")
        self.resize(980, 620)
        self._pending: tuple[AudioSource, str | None] | None = None
        self.hide_on_close = False  # a tray icon keeps the app: closing hides the window
        menu = self.menuBar().addMenu("&Earshot")
        self.preferences_action = menu.addAction("Preferences…")
        self.preferences_action.setShortcut(QKeySequence(QKeySequence.StandardKey.Preferences))
        self.preferences_action.triggered.connect(self.preferences_requested)

        self.record_button = QPushButton("● Record")
        self.record_button.setToolTip(f"Start or stop dictation ({RECORD_SHORTCUT})")
        self.record_button.clicked.connect(self.toggle_recording)
        self.mic_picker = QComboBox()
        self.mic_picker.setMinimumWidth(220)
        self.level = LevelMeter()
        self.server_picker = QComboBox()
        self.server_picker.setMinimumWidth(200)
        self._fill_server_picker([])
        self.server_picker.currentIndexChanged.connect(self._server_changed)
        self.model_picker = QComboBox()  # the models the server in use serves
        self.model_picker.setMinimumWidth(170)
        self.model_picker.setToolTip("Speech model (only those the server in use serves)")
        self.model_picker.currentIndexChanged.connect(self._model_changed)
        self.model_label = QLabel("")  # status bar: the model the server in use runs
        self.status = ServerStatus()
        self.transcript = TranscriptView()
        self.history_pane = HistoryPane(controller.history,
                                        orientation=Qt.Orientation.Vertical)
        self.message = QLabel("")
        self.message.setWordWrap(True)
        self.notice = QLabel("")  # trust warnings: impostors refused, insecure token storage
        self.notice.setWordWrap(True)
        self.notice.setStyleSheet("color: #9a3412; font-weight: bold;")
        self.notice.hide()
        self._pairing_done.connect(self._on_pairing_done)

        top = QHBoxLayout()
        top.addWidget(self.record_button)
        top.addWidget(QLabel("Microphone:"))
        top.addWidget(self.mic_picker)
        top.addWidget(self.level)
        top.addStretch(1)
        top.addWidget(QLabel("Server:"))
        top.addWidget(self.server_picker)
        top.addWidget(QLabel("Model:"))
        top.addWidget(self.model_picker)
        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(self.transcript)
        splitter.addWidget(self.history_pane)
        splitter.setSizes([560, 420])
        layout = QVBoxLayout()
        layout.addLayout(top)
        layout.addWidget(splitter, 1)
        layout.addWidget(self.notice)
        layout.addWidget(self.message)
        central = QWidget()
        central.setLayout(layout)
        self.setCentralWidget(central)
        self.statusBar().addPermanentWidget(self.status, 1)
        self.statusBar().addPermanentWidget(self.model_label)

        toggle = QAction("Record / stop", self)
        toggle.setShortcut(QKeySequence(RECORD_SHORTCUT))
        toggle.setShortcutContext(Qt.ShortcutContext.ApplicationShortcut)
        toggle.triggered.connect(self.toggle_recording)
        self.addAction(toggle)

        c = controller
        c.partial.connect(self._on_partial)
        c.final.connect(self._on_final)
        c.state.connect(self._on_state)
        c.latency.connect(self._on_latency)
        c.level.connect(self.level.set_level)
        c.recording.connect(self._on_recording)
        c.finished.connect(self._on_finished)
        c.failed.connect(self.show_message)
        c.start_failed.connect(self._on_start_failed)
        c.audio_lost.connect(self._on_audio_lost)
        c.local_server.connect(self._on_local_server)
        c.servers_found.connect(self._on_servers_found)
        c.trust_warning.connect(self.show_warning)
        c.models_available.connect(self._on_models_available)
        c.model_in_use.connect(self._on_model_in_use)
        self.refresh_microphones()
        self._restore_choices()

    # ---- choices -----------------------------------------------------------------------------
    def refresh_microphones(self) -> None:
        self.mic_picker.clear()
        try:
            devices = list_input_devices()
        except CaptureError as exc:
            self.mic_picker.addItem("(no audio system)", None)
            self.mic_picker.setToolTip(str(exc))
            self.mic_picker.setEnabled(False)
            return
        if not devices:
            self.mic_picker.addItem("(no microphone found)", None)
            self.mic_picker.setEnabled(False)
            return
        self.mic_picker.setEnabled(True)
        for d in devices:
            self.mic_picker.addItem(d.name + (" (default)" if d.is_default else ""), d.index)
            if d.is_default:
                self.mic_picker.setCurrentIndex(self.mic_picker.count() - 1)

    def _fill_server_picker(self, servers: list) -> None:
        """Automatic, this computer, manual entry, then the servers found on the LAN:
        🔒 needs pairing, ⚠ refused (identity mismatch), "open" needs no token."""
        picker = self.server_picker
        current = picker.currentData()
        picker.blockSignals(True)
        picker.clear()
        picker.addItem("Automatic", ("auto",))
        picker.addItem("This computer", ("local",))
        picker.addItem("Server address…", ("remote",))
        for s in servers:
            kind = "GPU" if s.has_gpu else "CPU"
            status = self.controller.assessment(s).status
            mark = {"needs pairing": " 🔒", "mismatch": " ⚠ refused", "open": " (open)",
                    "no tls": " ⚠ no TLS"}.get(status, "")
            picker.addItem(f"{s.name} ({kind}, {s.capacity} free){mark}",
                           ("server", s.url, s.server_id, status, s.fingerprint))
        index = picker.findData(current) if current is not None else -1
        if index < 0:
            index = {"auto": 0, "local": 1, "remote": 2}.get(self.controller.choice.mode, 0)
        picker.setCurrentIndex(index)
        picker.blockSignals(False)

    @Slot(list)
    def _on_servers_found(self, servers: list) -> None:
        self._fill_server_picker(servers)

    def _restore_choices(self) -> None:
        mode = self.settings.value("server/mode", "auto")
        url = self.settings.value("server/url", "")
        if url and is_plain_remote(url):  # saved before servers spoke TLS off the loopback
            url = "https://" + url.split("://", 1)[1]
            self.settings.setValue("server/url", url)
        self._migrate_plaintext_tokens(url)
        if mode == "remote" and url:
            self.controller.choice = ServerChoice("remote", url,
                                                  self.controller.credentials.get(
                                                      url_token_key(url)))
        elif mode == "local":
            self.controller.choice = ServerChoice("local")
        self._fill_server_picker(self.controller.discovered)
        saved_model = self.settings.value("model/id", "")
        if saved_model and self.controller.model is None:  # `earshot --model` wins
            self.controller.set_model(saved_model)
        self._fill_model_picker(self.controller.installed_models())
        mic = self.settings.value("audio/device_name", "")
        index = self.mic_picker.findText(mic) if mic else -1
        if index >= 0:
            self.mic_picker.setCurrentIndex(index)

    def _migrate_plaintext_tokens(self, url: str) -> None:
        """Tokens older versions kept in QSettings move to the credential store."""
        tokens = self.settings.value("server/tokens", {}) or {}
        legacy = dict(tokens) if isinstance(tokens, dict) else {}
        token = self.settings.value("server/token", "")
        if token and url:
            legacy[url_token_key(url)] = token
        if legacy:
            self.controller.credentials.migrate_plaintext(legacy)
        self.settings.remove("server/tokens")
        self.settings.remove("server/token")

    def set_server(self, url: str | None, token: str | None = None,
                   mode: str | None = None) -> None:
        """Prefer a server by URL (local fallback), or `mode` "auto"/"local" (url None).
        A token given here goes to the credential store, never to QSettings."""
        if url:
            self.controller.choice = ServerChoice("remote", url, token)
            self.settings.setValue("server/mode", "remote")
            self.settings.setValue("server/url", url)
            if token and not is_plain_remote(url):  # never sent over plain http anyway
                self.controller.credentials.set(url_token_key(url), token)
        else:
            mode = mode or "local"
            self.controller.choice = ServerChoice(mode)
            self.settings.setValue("server/mode", mode)

    @Slot(int)
    def _server_changed(self, index: int) -> None:
        data = self.server_picker.itemData(index) or ("auto",)
        if data[0] in ("auto", "local"):
            self.set_server(None, mode=data[0])
            if data[0] == "local":  # offer what this computer can serve
                self._fill_model_picker(self.controller.installed_models())
            return
        if data[0] == "server":
            _, url, server_id, status, fingerprint = data
            if status in ("mismatch", "no tls"):
                self.server_picker.setCurrentIndex(0)
                self.show_warning(f"Refused {url}: its identity does not match the pairing."
                                  if status == "mismatch" else
                                  f"Refused {url}: a paired server that serves no TLS.")
                return
            if status == "needs pairing":
                self._ask_token_and_pair(url, fingerprint or None, server_id)
                return
            self.set_server(url)
            served = self.controller.served_models(url)  # from its mDNS record
            if served:
                self._fill_model_picker(list(served))
            return
        self._ask_address()

    def _fill_model_picker(self, models: list[str]) -> None:
        """Offer `models` (what the server in use serves, its default first); select the
        pick when offered, else the server's default (the pick itself is kept)."""
        picker = self.model_picker
        picker.blockSignals(True)
        picker.clear()
        for i, model in enumerate(models):
            picker.addItem(model + (" (default)" if i == 0 else ""), model)
        index = picker.findData(self.controller.model) if self.controller.model else -1
        picker.setCurrentIndex(max(index, 0))
        picker.setEnabled(bool(models))
        picker.blockSignals(False)

    @Slot(int)
    def _model_changed(self, index: int) -> None:
        model = self.model_picker.itemData(index)
        if model:
            self.settings.setValue("model/id", model)
            self.controller.set_model(model)

    @Slot(str, list)
    def _on_models_available(self, server: str, models: list) -> None:
        self._fill_model_picker(list(models))

    @Slot(str, str)
    def _on_model_in_use(self, server: str, model: str) -> None:
        self.model_label.setText(f"Model: {model}")
        self.model_label.setToolTip(f"{server} decodes this dictation with {model}")

    def _ask_address(self) -> None:
        address, ok = QInputDialog.getText(self, "Server", "Server address (host:port):",
                                           QLineEdit.EchoMode.Normal,
                                           self.settings.value("server/url", ""))
        if not ok or not address.strip():
            self.server_picker.setCurrentIndex(0)
            return
        try:
            url = normalise_url(address)
        except ValueError as exc:
            self.server_picker.setCurrentIndex(0)
            self.show_message(str(exc))
            return
        self._ask_token_and_pair(url, None, None)

    def _ask_token_and_pair(self, url: str, fingerprint: str | None,
                            server_id: str | None) -> None:
        where = (f"\nIts certificate fingerprint should read (compare with `earshot-server "
                 f"identity` on the server):\n{format_fingerprint(fingerprint)}"
                 if fingerprint else "")
        token, ok = QInputDialog.getText(
            self, "Pair with a server",
            f"Token of {url}\n(on the server: `earshot-server token`; leave empty if it "
            f"needs none).{where}", QLineEdit.EchoMode.Password)
        if not ok:
            self.server_picker.setCurrentIndex(0)
            return
        self.pair_with(url, token.strip() or None, fingerprint, server_id)

    def pair_with(self, url: str, token: str | None, fingerprint: str | None = None,
                  server_id: str | None = None) -> Future:
        """Pair in the background; on success the server becomes the preferred one."""
        self.show_message(f"Pairing with {url}…")
        future = self.controller.pair(url, token, fingerprint, server_id)
        future.add_done_callback(lambda f: self._pairing_done.emit(f, url, ""))
        return future

    @Slot(object, str, str)
    def _on_pairing_done(self, future: Future, url: str, _name: str) -> None:
        try:
            verified = future.result()
        except PairingError as exc:
            self.server_picker.setCurrentIndex(0)
            self.show_message(f"Not paired: {exc}")
            if exc.code == "identity_mismatch":
                self.show_warning(str(exc))
            return
        except Exception as exc:  # e.g. the config folder or keyring refused the write
            self.server_picker.setCurrentIndex(0)
            self.show_message(f"Not paired: {exc}")
            return
        self.set_server(verified.url)
        self._fill_server_picker(self.controller.discovered)
        self.show_message(f"Paired with {verified.name}.")

    # ---- recording ---------------------------------------------------------------------------
    def set_pending_source(self, source: AudioSource | None, title: str | None = None) -> None:
        """The next start (from any entry point) dictates from `source` instead of the
        microphone, once. None clears it."""
        self._pending = (source, title) if source is not None else None

    @property
    def has_pending_source(self) -> bool:
        return self._pending is not None

    @Slot()
    def toggle_recording(self) -> None:
        if self.controller.is_recording:
            self.stop_recording()
        else:
            self.start_recording()

    def start_recording(self) -> bool:
        """Start dictating from the pending source or the chosen microphone. False (and
        the reason in the message line) when it cannot start, or is already running."""
        if self.controller.is_recording:
            return False
        if self._pending is not None:
            pending, self._pending = self._pending, None
            started = self.start_dictation(*pending)
            if not started:
                self._pending = pending
            return started
        device = self.mic_picker.currentData()
        if device is None:
            self.show_message("No microphone is available. Connect one, or run "
                              "`earshot --audio-file FILE` to dictate from a file.")
            return False
        self.settings.setValue("audio/device_name", self.mic_picker.currentText())
        return self.start_dictation(MicrophoneSource(device))

    def stop_recording(self) -> bool:
        """Stop the running dictation (its results keep arriving); False when none runs."""
        if not self.controller.is_recording:
            return False
        self.controller.stop()
        return True

    def start_dictation(self, source: AudioSource, title: str | None = None) -> bool:
        """Start a dictation; returns at once. True: capturing, and `recording(True)` (or
        `failed`) follows once a server is connected; False: refused now (see the message)."""
        self.transcript.clear()
        self.show_message("")
        started = self.controller.start(source, title)
        if started and self.controller.is_recording:
            self.record_button.setText("■ Stop")  # capturing already; Stop works meanwhile
        if started:
            self.dictation_started.emit()
        return started

    # ---- controller signals ------------------------------------------------------------------
    @Slot(str)
    def _on_partial(self, text: str) -> None:
        self.transcript.set_partial(len(self.transcript.segments()), text)

    @Slot(int, float, float, str, str)
    def _on_final(self, index: int, start: float, end: float, text: str, error: str) -> None:
        self.transcript.add_final(index, start, end, text, error or None)

    @Slot(str, str, str, str)
    def _on_state(self, state: str, server: str, device: str, detail: str) -> None:
        state = {"done": "connected", "degraded": "busy"}.get(state, state)
        self.status.show_state(state, server, device or None, None, detail)

    @Slot(str, str, float)
    def _on_latency(self, server: str, device: str, milliseconds: float) -> None:
        if self.status.state() in ("connected", "fallback"):
            self.status.show_state(self.status.state(), server, device or None, milliseconds)

    @Slot(bool)
    def _on_recording(self, on: bool) -> None:
        self.record_button.setText("■ Stop" if on else "● Record")
        if not on:
            self.level.reset()

    @Slot(str)
    def _on_start_failed(self, _message: str) -> None:
        self._on_recording(False)

    @Slot(float)
    def _on_audio_lost(self, milliseconds: float) -> None:
        self.show_message(lost_audio_text(milliseconds))

    @Slot(int)
    def _on_finished(self, dictation_id: int) -> None:
        self.history_pane.refresh()
        self.history_pane.select(dictation_id)
        if self.controller.lost_ms and not self.message.text():
            self.show_message(lost_audio_text(self.controller.lost_ms))

    @Slot(str)
    def _on_local_server(self, status: str) -> None:
        if status == "starting":
            self.status.show_state("loading", "This computer", "cpu", None,
                                   "loading the speech model")
        elif status == "ready":
            self.status.show_state("connected", "This computer", "cpu", None, "ready")
            self._on_model_in_use("This computer", self.controller.embedded_model())
        else:
            self.status.show_state("error", "This computer", "cpu", None, status)
            self.show_message(f"The local speech engine could not start: {status}. "
                              "Run `earshot models fetch` to install the model.")

    @Slot(str)
    def show_message(self, text: str) -> None:
        self.message.setText(text)

    @Slot(str)
    def show_warning(self, text: str) -> None:
        self.notice.setText(text)
        self.notice.setVisible(bool(text))

    def closeEvent(self, event) -> None:
        """With a tray icon (`hide_on_close`) closing only hides the window: dictation
        goes on and the tray's Quit ends the app. Otherwise a running dictation is
        stopped after asking."""
        if self.hide_on_close:
            event.ignore()
            self.hide()
            return
        if self.controller.is_recording:
            answer = QMessageBox.question(self, "Earshot",
                                          "A dictation is running. Stop it and quit?")
            if answer != QMessageBox.StandardButton.Yes:
                event.ignore()
                return
            self.controller.stop()
        event.accept()
