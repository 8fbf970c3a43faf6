"""LevelMeter: a horizontal microphone level bar with a short peak hold.

Contract:
- `set_level(dbfs)` maps FLOOR_DBFS..0 dBFS linearly onto 0..100 % (below the floor, silence
  (`capture.SILENCE_DBFS`, -100) and NaN read 0 %; above 0 dBFS reads 100 %) and repaints.
- The peak marker jumps up with the level, holds for PEAK_HOLD_MS, then falls at
  PEAK_FALL_PER_S, so a full-scale peak is gone about 1 s after the level drops. The decay
  runs on a QTimer that stops as soon as the peak meets the level.
- Zones: green below -18 dBFS, yellow -18..-6 dBFS, red above -6 dBFS.
- Feed it `desktop.capture.level_dbfs(chunk)` values; it holds no audio logic of its own.

Thread rule: GUI thread only (capture callbacks run on a worker thread: hand the level over
with a queued signal).
"""

from __future__ import annotations

import math

from PySide6.QtCore import QElapsedTimer, QRectF, QSize, QTimer
from PySide6.QtGui import QColor, QPainter, QPaintEvent
from PySide6.QtWidgets import QSizePolicy, QWidget

FLOOR_DBFS = -60.0
PEAK_HOLD_MS = 300
PEAK_FALL_PER_S = 150.0  # percent per second: 100 % falls in about 0.7 s after the hold
TICK_MS = 30
# (upper bound in percent, lit colour, unlit colour)
ZONES = (
    (70.0, QColor("#2e9e44"), QColor("#1d3a24")),  # up to -18 dBFS
    (90.0, QColor("#e0b000"), QColor("#443a12")),  # up to -6 dBFS
    (100.0, QColor("#d6302b"), QColor("#4a1d1c")),
)
BACKGROUND = QColor("#202124")
PEAK_COLOR = QColor("#f5f5f5")


def dbfs_to_percent(dbfs: float) -> float:
    """FLOOR_DBFS..0 dBFS onto 0..100 (clamped; NaN is 0)."""
    if math.isnan(dbfs):
        return 0.0
    return min(100.0, max(0.0, (dbfs - FLOOR_DBFS) / -FLOOR_DBFS * 100.0))


class LevelMeter(QWidget):
    """Microphone level bar; see the module docstring."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._level = 0.0
        self._peak = 0.0
        self._peak_age = QElapsedTimer()  # time since the peak was last pushed up
        self._peak_age.start()
        self._last_tick = QElapsedTimer()
        self._timer = QTimer(self)
        self._timer.setInterval(TICK_MS)
        self._timer.timeout.connect(self._decay)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setAccessibleName("Microphone level")

    def set_level(self, dbfs: float) -> None:
        self._level = dbfs_to_percent(dbfs)
        if self._level >= self._peak:
            self._peak = self._level
            self._peak_age.restart()
        if self._peak > self._level and not self._timer.isActive():
            self._last_tick.restart()
            self._timer.start()
        self.update()

    def reset(self) -> None:
        """Back to silence with no peak (e.g. when recording stops)."""
        self._level = self._peak = 0.0
        self._timer.stop()
        self.update()

    def level_percent(self) -> int:
        return round(self._level)

    def peak_percent(self) -> int:
        return round(self._peak)

    def sizeHint(self) -> QSize:
        return QSize(160, 14)

    def minimumSizeHint(self) -> QSize:
        return QSize(40, 8)

    def _decay(self) -> None:
        elapsed_s = self._last_tick.restart() / 1000.0
        if self._peak_age.elapsed() >= PEAK_HOLD_MS:
            self._peak = max(self._level, self._peak - PEAK_FALL_PER_S * elapsed_s)
        if self._peak <= self._level:
            self._peak = self._level
            self._timer.stop()
        self.update()

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        rect = QRectF(self.rect())
        painter.fillRect(rect, BACKGROUND)
        inner = rect.adjusted(1, 1, -1, -1)
        lit_to = inner.left() + inner.width() * self._level / 100.0
        lower = 0.0
        for upper, lit, unlit in ZONES:
            left = inner.left() + inner.width() * lower / 100.0
            right = inner.left() + inner.width() * upper / 100.0
            painter.fillRect(QRectF(left, inner.top(), right - left, inner.height()), unlit)
            if lit_to > left:
                width = min(right, lit_to) - left
                painter.fillRect(QRectF(left, inner.top(), width, inner.height()), lit)
            lower = upper
        if self._peak > 0.5:
            x = inner.left() + inner.width() * self._peak / 100.0
            marker = QRectF(max(inner.left(), x - 2), inner.top(), 2, inner.height())
            painter.fillRect(marker, PEAK_COLOR)
        painter.end()
