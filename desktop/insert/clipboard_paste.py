"""Insertion through the clipboard: put the text there, press Ctrl+V (Cmd+V on macOS),
then give the clipboard back what it held before.

GUI thread only (QClipboard), never blocking: operations go through a queue that a
QTimer drives.
- A `Text` op: the first one after an idle period saves the clipboard (every format of
  its mime data, e.g. text, HTML, images; an empty clipboard is remembered as empty), then
  offers the text and sends the paste shortcut.
- The target application fetches the text from this process *after* it has processed the
  keystroke, so the clipboard is not touched again (next op, or the restore) until the
  paste has settled: at least `settle_ms` after the shortcut, and until a fetch of our
  text has been seen after the shortcut (then 30 ms more, for further formats), or at
  most `max_settle_ms` when no fetch is seen (a platform that renders eagerly, or a target
  that ignored the keystroke). A clipboard manager fetching our text in that window counts
  as a fetch; with targets slower than `settle_ms` that could restore too early.
- A `Backspace` op ("scratch that") is keystrokes, sent in order with the pastes.
- When the queue is empty and the last paste has settled, the saved clipboard is put back;
  unless someone else set the clipboard in the meantime (its text is no longer ours): then
  theirs is kept.
The first op of an idle queue runs at once, so a failure to send raises InsertionError
from `apply()`; a failure of a later, deferred op goes to `on_error` (the error is also
kept in `error`). `when_idle(callback)` runs the callback once everything is pasted and
the clipboard is restored (a scripted run must not quit earlier: the target still needs
to fetch the text from this process).

Limits: terminals paste with Ctrl+Shift+V, so Ctrl+V does not reach their prompt; a
clipboard manager may record the dictated text in its history.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

from PySide6.QtCore import QMimeData, QObject, QTimer
from PySide6.QtGui import QClipboard, QGuiApplication

from desktop.insert.errors import InsertionError
from desktop.insert.joiner import Backspace, Op, Text
from desktop.insert.keystrokes import KeySender

log = logging.getLogger(__name__)

SETTLE_MS = 150  # after Ctrl+V: the least time before the clipboard changes again
MAX_SETTLE_MS = 1500  # ... and the most, when no fetch of the text is seen
FETCH_GRACE_S = 0.03  # after a fetch: time for the target to ask for other formats
POLL_MS = 20


def copy_mime(data: QMimeData | None) -> QMimeData:
    """A deep copy of the clipboard's mime data (every format it offers)."""
    out = QMimeData()
    if data is None:
        return out
    for fmt in data.formats():
        try:
            out.setData(fmt, data.data(fmt))
        except Exception:  # an owner that fails to convert one format: keep the others
            log.debug("clipboard format %s not saved", fmt, exc_info=True)
    return out


class _Offer(QMimeData):
    """The text we put on the clipboard; tells when someone fetches it."""

    def __init__(self, text: str, on_fetch: Callable[[], None]) -> None:
        super().__init__()
        self._on_fetch = on_fetch
        self.setText(text)

    def retrieveData(self, mimetype: str, preferredType: object) -> object:
        self._on_fetch()
        return super().retrieveData(mimetype, preferredType)


class ClipboardPaster(QObject):
    """Pastes ops through the clipboard (see the module doc). GUI thread only."""

    def __init__(self, keys: KeySender, settle_ms: int = SETTLE_MS,
                 max_settle_ms: int = MAX_SETTLE_MS, parent: QObject | None = None) -> None:
        super().__init__(parent)
        if QGuiApplication.instance() is None:
            raise InsertionError("Paste insertion needs the app's GUI (no QGuiApplication)")
        self._keys = keys
        self._clipboard: QClipboard = QGuiApplication.clipboard()
        self.settle_ms = settle_ms
        self.max_settle_ms = max(max_settle_ms, settle_ms)
        self._pasted_at: float | None = None  # monotonic time of the last shortcut sent
        self._fetched_at: float | None = None  # ... and of the last fetch seen after it
        self._queue: deque[Op] = deque()
        self._saved: QMimeData | None = None
        self._ours: str | None = None  # the text we last put on the clipboard
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self._settled)
        self._idle_callbacks: list[Callable[[], None]] = []
        self.on_error: Callable[[InsertionError], None] | None = None
        self.error: InsertionError | None = None

    @property
    def busy(self) -> bool:
        """Ops queued, a paste settling, or the clipboard not yet restored."""
        return bool(self._queue) or self._timer.isActive() or self._saved is not None

    def apply(self, ops: list[Op]) -> None:
        """Queue `ops`; the first runs now when nothing is pending (its failure raises)."""
        self._queue.extend(ops)
        if not self._timer.isActive():
            self._pump(raise_errors=True)

    def when_idle(self, callback: Callable[[], None]) -> None:
        """Call `callback` (GUI thread) once all is pasted and the clipboard restored."""
        if self.busy:
            self._idle_callbacks.append(callback)
        else:
            callback()

    def _pump(self, raise_errors: bool) -> None:
        while self._queue:
            op = self._queue.popleft()
            try:
                if isinstance(op, Backspace):
                    self._keys.backspace(op.count)
                    continue
                assert isinstance(op, Text)
                self._paste(op.text)
            except InsertionError as exc:
                self._queue.clear()
                self._fail(exc, raise_errors)
                return
            self._timer.start(self.settle_ms)
            return
        self._restore()

    def _paste(self, text: str) -> None:
        if self._saved is None:
            self._saved = copy_mime(self._clipboard.mimeData(QClipboard.Mode.Clipboard))
        self._ours = text
        self._pasted_at = self._fetched_at = None
        self._clipboard.setMimeData(_Offer(text, self._fetched), QClipboard.Mode.Clipboard)
        self._pasted_at = time.monotonic()
        self._keys.paste_shortcut()

    def _fetched(self) -> None:
        if self._pasted_at is not None:
            self._fetched_at = time.monotonic()

    def _settled(self) -> None:
        now = time.monotonic()
        assert self._pasted_at is not None
        waited_ms = (now - self._pasted_at) * 1000
        fetched = self._fetched_at is not None and now - self._fetched_at >= FETCH_GRACE_S
        if not fetched and waited_ms < self.max_settle_ms:
            self._timer.start(POLL_MS)
            return
        if not fetched:
            log.info("paste: no fetch of the text seen within %d ms", self.max_settle_ms)
        self._pasted_at = self._fetched_at = None
        self._pump(raise_errors=False)

    def _restore(self) -> None:
        saved, self._saved = self._saved, None
        if saved is not None:
            if self._clipboard.text(QClipboard.Mode.Clipboard) != self._ours:
                log.info("clipboard changed by someone else while pasting: theirs is kept")
            elif saved.formats():
                self._clipboard.setMimeData(saved, QClipboard.Mode.Clipboard)
            else:
                self._clipboard.clear(QClipboard.Mode.Clipboard)
        self._ours = None
        callbacks, self._idle_callbacks = self._idle_callbacks, []
        for cb in callbacks:
            cb()

    def _fail(self, exc: InsertionError, raise_errors: bool) -> None:
        self._restore()
        if raise_errors:
            raise exc
        self.error = exc
        log.warning("paste insertion failed: %s", exc)
        if self.on_error is not None:
            self.on_error(exc)
