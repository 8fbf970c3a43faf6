"""ServerStatus: one line saying where transcription happens and how well.

Contract:
- `show_state(state, server, device=None, latency_ms=None, detail="")` renders
  "● <State> — <server> (<device>) · <latency> ms", leaving out whatever is not given, e.g.
  "● Connected — office-gpu (GPU) · 42 ms". `state` is one of STATES (anything else raises
  ValueError). The text is plain text (a server name is never parsed as HTML).
- Colour (the label's WindowText palette role): green for connected; amber for reconnecting,
  fallback, busy and loading; red for error and offline; grey for connecting.
- `detail` becomes the tooltip (empty clears it). A new widget shows "offline".
- It only displays what it is told; the connection logic lives in the controller.

Thread rule: GUI thread only.
"""

from __future__ import annotations

import math

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QLabel, QWidget

GREEN = QColor("#2e7d32")
AMBER = QColor("#b26a00")
RED = QColor("#c62828")
GREY = QColor("#616161")

# state -> (label, colour)
STATES: dict[str, tuple[str, QColor]] = {
    "connecting": ("Connecting", GREY),
    "connected": ("Connected", GREEN),
    "reconnecting": ("Reconnecting", AMBER),
    "fallback": ("Local fallback", AMBER),
    "busy": ("Server busy (live text paused)", AMBER),
    "loading": ("Loading model", AMBER),
    "offline": ("Offline", RED),
    "error": ("Error", RED),
}
DEVICE_NAMES = {"cuda": "GPU", "gpu": "GPU", "cpu": "CPU"}


def status_text(
    state: str, server: str, device: str | None = None, latency_ms: float | None = None
) -> str:
    """The line ServerStatus shows for these values (ValueError for an unknown state)."""
    if state not in STATES:
        raise ValueError(f"unknown server state {state!r}; use one of {', '.join(STATES)}")
    text = f"● {STATES[state][0]}"
    if server:
        text += f" — {server}"
    if device:
        text += f" ({DEVICE_NAMES.get(device.lower(), device)})"
    if latency_ms is not None and math.isfinite(latency_ms):
        text += f" · {latency_ms:.0f} ms"
    return text


class ServerStatus(QLabel):
    """Coloured one-line server state; see the module docstring."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setTextFormat(Qt.TextFormat.PlainText)
        self.setAccessibleName("Server status")
        self._state = ""
        self.show_state("offline", "")

    def show_state(
        self,
        state: str,
        server: str,
        device: str | None = None,
        latency_ms: float | None = None,
        detail: str = "",
    ) -> None:
        self.setText(status_text(state, server, device, latency_ms))
        self._state = state
        palette = self.palette()
        palette.setColor(QPalette.ColorRole.WindowText, STATES[state][1])
        self.setPalette(palette)
        self.setToolTip(detail)

    def state(self) -> str:
        return self._state

    def color(self) -> QColor:
        """The colour of the current state."""
        return QColor(STATES[self._state][1])
