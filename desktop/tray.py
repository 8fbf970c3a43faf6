"""The tray icon: what dictation is doing at a glance, and its menu.

States (`TRAY_STATES`), derived from DictationController's signals:
- "idle": no dictation;
- "listening": dictating, on this computer by choice, or still connecting/reconnecting;
- "remote": dictating, the audio going to a server on the LAN (the box);
- "fallback": dictating on this computer because the preferred server failed or refused
  (the controller's "fallback" state, or "connected" to this computer while a remote
  server is the choice);
- "error": the last dictation failed (`failed`), no server could take the audio
  ("offline"), or the local speech engine did not start. Cleared by the next start.
Each state has its own icon (drawn, so no image files) and tooltip.

Menu: Start/Stop dictation, Server (the window's server picker's choices, mirrored when
the menu opens; picking one is the same as picking it in the window, pairing included),
Show window, Preferences…, Quit. Actions call the callables given to the constructor.

When the desktop has no system tray (`QSystemTrayIcon.isSystemTrayAvailable()` false,
e.g. bare Xvfb) `show()` returns False and the icon stays hidden; the object still tracks
the state (the app says once that it works with its window only). GUI thread only.
"""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QObject, QPointF, QRectF, Qt, Slot
from PySide6.QtGui import QAction, QActionGroup, QColor, QFont, QIcon, QPainter, QPixmap
from PySide6.QtWidgets import QComboBox, QMenu, QSystemTrayIcon

from desktop.controller import LOCAL_NAME, DictationController

TRAY_STATES: dict[str, tuple[str, str]] = {  # state -> (colour, mark drawn on the icon)
    "idle": ("#757575", ""),
    "listening": ("#d32f2f", ""),
    "remote": ("#1565c0", "↑"),
    "fallback": ("#ef6c00", "L"),
    "error": ("#b71c1c", "!"),
}
NO_TRAY = ("No system tray here: Earshot works with its window only (and the hotkey, and "
           "`earshot --toggle`).")


def state_icon(state: str, size: int = 64) -> QIcon:
    """The icon of a tray state: a coloured disc (a hollow ring when idle) with a mark."""
    colour, mark = TRAY_STATES[state]
    pixmap = QPixmap(size, size)
    pixmap.fill(Qt.GlobalColor.transparent)
    p = QPainter(pixmap)
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    pen = p.pen()
    pen.setColor(QColor(colour))
    pen.setWidthF(size * 0.1)
    p.setPen(pen)
    p.setBrush(Qt.BrushStyle.NoBrush if state == "idle" else QColor(colour))
    margin = size * 0.08
    p.drawEllipse(QRectF(margin, margin, size - 2 * margin, size - 2 * margin))
    if state == "idle":  # a small microphone dot in the ring
        p.setBrush(QColor(colour))
        p.drawEllipse(QPointF(size / 2, size / 2), size * 0.12, size * 0.12)
    if mark:
        p.setPen(QColor("white"))
        font = QFont()
        font.setBold(True)
        font.setPixelSize(int(size * 0.55))
        p.setFont(font)
        p.drawText(QRectF(0, 0, size, size), Qt.AlignmentFlag.AlignCenter, mark)
    p.end()
    return QIcon(pixmap)


class TrayIcon(QObject):
    """See the module docstring. `hotkey_name` is shown in the idle tooltip."""

    def __init__(self, controller: DictationController, server_picker: QComboBox, *,
                 toggle: Callable[[], None], show_window: Callable[[], None],
                 preferences: Callable[[], None], quit: Callable[[], None],
                 hotkey_name: str = "", parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.controller = controller
        self.server_picker = server_picker
        self.hotkey_name = hotkey_name
        self.icons = {state: state_icon(state) for state in TRAY_STATES}
        self.tray = QSystemTrayIcon(self)
        self.state = ""
        self.detail = ""
        self._server = ""

        self.menu = QMenu()
        self.toggle_action = self.menu.addAction("Start dictation")
        self.toggle_action.triggered.connect(lambda: toggle())
        self.server_menu = self.menu.addMenu("Server")
        self.server_group = QActionGroup(self)
        self.server_group.setExclusive(True)
        self.server_menu.aboutToShow.connect(self.refresh_servers)
        self.menu.addSeparator()
        self.show_action = self.menu.addAction("Show window")
        self.show_action.triggered.connect(lambda: show_window())
        self.preferences_action = self.menu.addAction("Preferences…")
        self.preferences_action.triggered.connect(lambda: preferences())
        self.menu.addSeparator()
        self.quit_action = self.menu.addAction("Quit Earshot")
        self.quit_action.triggered.connect(lambda: quit())
        self.tray.setContextMenu(self.menu)
        self.tray.activated.connect(self._on_activated)
        self._show_window = show_window
        self.refresh_servers()

        c = controller
        c.recording.connect(self._on_recording)
        c.state.connect(self._on_state)
        c.failed.connect(self._on_failed)
        c.start_failed.connect(self._on_start_failed)
        c.local_server.connect(self._on_local_server)
        c.servers_found.connect(lambda _servers: self.refresh_servers())
        self.set_state("idle")

    @staticmethod
    def available() -> bool:
        return QSystemTrayIcon.isSystemTrayAvailable()

    def show(self) -> bool:
        """Show the icon; False (and hidden) when the desktop has no system tray."""
        if not self.available():
            return False
        self.tray.show()
        return True

    def hide(self) -> None:
        self.tray.hide()

    # ---- state -------------------------------------------------------------------------
    def set_state(self, state: str, detail: str = "") -> None:
        """Show `state` (one of TRAY_STATES; ValueError otherwise) with its tooltip."""
        if state not in TRAY_STATES:
            raise ValueError(f"unknown tray state {state!r}: use one of {', '.join(TRAY_STATES)}")
        self.state, self.detail = state, detail
        self.tray.setIcon(self.icons[state])
        self.tray.setToolTip(self.tooltip())
        dictating = self.controller.is_recording
        self.toggle_action.setText("Stop dictation" if dictating else "Start dictation")

    def tooltip(self) -> str:
        server = self._server or LOCAL_NAME
        text = {
            "idle": "Earshot: idle" + (f" ({self.hotkey_name} to dictate)"
                                       if self.hotkey_name else ""),
            "listening": f"Earshot: listening ({server})",
            "remote": f"Earshot: listening, sending to {server}",
            "fallback": f"Earshot: listening, local fallback ({LOCAL_NAME})",
            "error": "Earshot: error",
        }[self.state]
        return f"{text}: {self.detail}" if self.detail else text

    @Slot(bool)
    def _on_recording(self, on: bool) -> None:
        if on:
            if self.state in ("idle", "error"):
                self.set_state("listening")
            else:
                self.set_state(self.state, self.detail)  # the menu says "Stop" now
        elif self.state != "error":
            self._server = ""
            self.set_state("idle")
        else:
            self.set_state("error", self.detail)

    @Slot(str, str, str, str)
    def _on_state(self, state: str, server: str, _device: str, detail: str) -> None:
        if server:
            self._server = server
        if state == "connecting":  # a new dictation: capture has begun
            self.set_state("listening")
        elif state in ("connected", "degraded"):
            if server and server != LOCAL_NAME:
                self.set_state("remote")
            elif self.controller.choice.mode == "remote":
                self.set_state("fallback")
            else:
                self.set_state("listening")
        elif state == "fallback":
            self.set_state("remote" if server and server != LOCAL_NAME else "fallback")
        elif state == "reconnecting":
            self.set_state(self.state if self.state != "idle" else "listening", detail)
        elif state == "offline":
            self.set_state("error", detail)
        # "error" (one server refused; the next is tried) and "done" change nothing here

    @Slot(str)
    def _on_failed(self, message: str) -> None:
        self.set_state("error", message)

    @Slot(str)
    def _on_start_failed(self, message: str) -> None:
        self.set_state("error", message)

    @Slot(str)
    def _on_local_server(self, status: str) -> None:
        if status not in ("starting", "ready"):
            self.set_state("error", f"the local speech engine could not start: {status}")
        elif status == "ready" and self.state == "error" and not self.controller.is_recording:
            self.set_state("idle")

    # ---- menu --------------------------------------------------------------------------
    def refresh_servers(self) -> None:
        """Mirror the window's server picker (same choices, the current one checked)."""
        for action in self.server_group.actions():
            self.server_group.removeAction(action)
        self.server_menu.clear()
        picker = self.server_picker
        for i in range(picker.count()):
            action = QAction(picker.itemText(i), self.server_menu)
            action.setCheckable(True)
            action.setChecked(i == picker.currentIndex())
            action.setData(i)
            action.triggered.connect(lambda _checked=False, i=i: self.choose_server(i))
            self.server_group.addAction(action)
            self.server_menu.addAction(action)

    def server_actions(self) -> list[QAction]:
        return list(self.server_menu.actions())

    def choose_server(self, index: int) -> None:
        """Pick the picker's item `index`, as if picked in the window."""
        self.server_picker.setCurrentIndex(index)
        self.refresh_servers()

    @Slot(QSystemTrayIcon.ActivationReason)
    def _on_activated(self, reason: QSystemTrayIcon.ActivationReason) -> None:
        if reason == QSystemTrayIcon.ActivationReason.Trigger:  # a plain click
            self._show_window()
