"""Put each final at the cursor of whatever application has the keyboard focus.

`TextInserter` is the facade the app uses: GUI thread only; give it the finals of a
dictation in order, never partials. Modes:
- "type": keystrokes (desktop.insert.keystrokes: pynput on X11/Windows/macOS, wtype on
  Wayland). Synchronous: `insert_final` returns once the keystrokes are sent.
- "paste": the clipboard plus Ctrl+V, the previous clipboard restored afterwards
  (desktop.insert.clipboard_paste). Needs a QGuiApplication on a real display (not Qt's
  offscreen platform). Non-blocking: pastes are queued and spaced on the GUI thread.
- "off": nothing is inserted (`inserted` stays empty).
Spacing, capitalisation and the spoken commands are the joiner's (desktop.insert.joiner,
whose docstring is the grammar); `spoken_commands=False` types "new line" as words.

The keystroke backend is made on the first `begin()` (or `insert_final()`), not in the
constructor, so a missing X display or `wtype` raises InsertionError when a dictation
starts, with the message to show. A backend failure while inserting raises
InsertionError from `insert_final` and leaves the joining state as before that final. A
paste that fails later, from the queue, goes to `on_error` when set, else it is raised by
the next `insert_final`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from desktop.insert.errors import InsertionError
from desktop.insert.joiner import Backspace, Joiner, Op, Text
from desktop.insert.keystrokes import KeySender, key_sender, keys_unavailable

log = logging.getLogger(__name__)

MODES = ("type", "paste", "off")

__all__ = ["MODES", "InsertionError", "TextInserter", "available_modes"]


class _Backend(Protocol):
    """What applies the joiner's ops: _Typer, or clipboard_paste.ClipboardPaster."""

    busy: bool
    error: InsertionError | None

    def apply(self, ops: list[Op]) -> None: ...

    def when_idle(self, callback: Callable[[], None]) -> None: ...


class _Typer:
    """Applies ops as keystrokes at once."""

    error: InsertionError | None = None

    busy = False

    def __init__(self, keys: KeySender) -> None:
        self._keys = keys

    def apply(self, ops: list[Op]) -> None:
        for op in ops:
            if isinstance(op, Backspace):
                self._keys.backspace(op.count)
            elif isinstance(op, Text):
                self._keys.type_text(op.text)

    def when_idle(self, callback: Callable[[], None]) -> None:
        callback()


class TextInserter:
    """GUI thread only. Finals in order; partials never."""

    def __init__(self, mode: str, spoken_commands: bool = True, *,
                 settle_ms: int | None = None) -> None:
        """`mode`: "type" | "paste" | "off" (ValueError otherwise). `settle_ms` (paste
        mode): the least time a paste is given before the clipboard is touched again
        (clipboard_paste.SETTLE_MS when None)."""
        if mode not in MODES:
            raise ValueError(f"unknown insertion mode {mode!r}: use one of {', '.join(MODES)}")
        self.mode = mode
        self.spoken_commands = spoken_commands
        self._settle_ms = settle_ms
        self._joiner = Joiner(spoken_commands)
        self._backend: _Backend | None = None
        self.on_error: Callable[[InsertionError], None] | None = None

    def _ensure_backend(self) -> _Backend | None:
        if self._backend is None and self.mode != "off":
            if self.mode == "type":
                self._backend = _Typer(key_sender("type"))
            else:
                from desktop.insert.clipboard_paste import SETTLE_MS, ClipboardPaster

                paster = ClipboardPaster(key_sender("paste"), settle_ms=(
                    SETTLE_MS if self._settle_ms is None else self._settle_ms))
                paster.on_error = self._deferred_error
                self._backend = paster
        return self._backend

    def _deferred_error(self, exc: InsertionError) -> None:
        if self.on_error is not None:
            self.on_error(exc)

    def begin(self, preceding: str | None = None) -> None:
        """A new dictation starts: the joining state is reset. `preceding`: the text just
        before the cursor when known ("" for an empty field), else None (the first segment
        then gets no leading space and keeps its casing). Raises InsertionError when this
        mode cannot work here (the message says why and what to do)."""
        self._joiner.reset(preceding)
        self._ensure_backend()

    def insert_final(self, text: str) -> None:
        """Insert one final's text (joined, commands applied); InsertionError on failure."""
        if self.mode == "off":
            return
        backend = self._ensure_backend()
        assert backend is not None
        late = backend.error
        if late is not None and self.on_error is None:
            backend.error = None
            raise late
        state = self._joiner.state()
        ops = self._joiner.feed(text)
        if not ops:
            return
        try:
            backend.apply(ops)
        except InsertionError:
            self._joiner.restore(state)
            raise

    @property
    def inserted(self) -> list[str]:
        """What was inserted per segment so far, separators included, scratched ones gone."""
        return [] if self.mode == "off" else self._joiner.units

    @property
    def busy(self) -> bool:
        """Paste mode: pastes still queued or the clipboard not yet restored."""
        return bool(self._backend is not None and self._backend.busy)

    def when_idle(self, callback: Callable[[], None]) -> None:
        """Call `callback` on the GUI thread once everything is inserted (paste mode: and
        the clipboard restored); at once when nothing is pending. Call it before quitting:
        a pasted text is fetched from this process by the target after Ctrl+V."""
        if self._backend is None:
            callback()
        else:
            self._backend.when_idle(callback)


def available_modes() -> dict[str, str | None]:
    """mode -> None if usable here, else why not (for the settings UI)."""
    paste = keys_unavailable("paste")
    if paste is None:
        try:
            from PySide6.QtGui import QGuiApplication
        except ImportError:
            paste = "Paste mode needs the desktop app (PySide6)"
        else:
            app = QGuiApplication.instance()
            platform = QGuiApplication.platformName() if app is not None else ""
            if app is None:
                paste = "Paste mode needs the app's GUI (no QGuiApplication yet)"
            elif platform in ("offscreen", "minimal"):
                paste = f"Paste mode needs a real display (Qt platform {platform!r})"
    return {"type": keys_unavailable("type"), "paste": paste, "off": None}
