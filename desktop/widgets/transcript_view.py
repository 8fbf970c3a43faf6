"""TranscriptView: the live (or stored) transcript of one dictation, read-only.

Contract:
- One paragraph per segment, ordered by segment number whatever order updates arrive in.
- `set_partial(segment, text)` shows or replaces the in-progress text of a segment in grey
  italics with a trailing "…"; an empty text removes it; a partial for a segment that already
  has its final is stale and ignored.
- `add_final(segment, start, end, text, error=None)` replaces that segment's partial with
  "[m:ss] text" (m:ss = `start`). A second final for the same segment is ignored (each
  segment is shown exactly once) and `add_final` returns False. A final with `error` set is
  shown as a red "[segment could not be transcribed]" marker (the error is its tooltip); a
  final with empty text and no error is recorded but takes no paragraph.
- Text is inserted as plain text through QTextCursor (never parsed as HTML), one paragraph
  edit per update, so thousands of segments stay cheap and "<b>&" shows literally.
- The view follows the end of the transcript on every update unless the user has scrolled
  away from the bottom; scrolling back to the bottom resumes following.

Thread rule: GUI thread only. Results arriving on a network or audio thread must be handed
over with a queued signal first.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass

from PySide6.QtGui import QColor, QFont, QTextBlockFormat, QTextCharFormat, QTextCursor
from PySide6.QtWidgets import QTextBrowser, QVBoxLayout, QWidget

from desktop.widgets._format import clock

FAILED_MARKER = "[segment could not be transcribed]"
ELLIPSIS = "…"
PARTIAL_COLOR = QColor("#8a8a8a")
TIME_COLOR = QColor("#5f6b7a")
ERROR_COLOR = QColor("#c62828")
FOLLOW_SLACK_PX = 4  # this close to the bottom still counts as "at the bottom"


@dataclass(frozen=True)
class _Final:
    start: float
    end: float
    text: str
    error: str | None


class TranscriptView(QWidget):
    """Read-only transcript: finals with timestamps, in-progress partials in grey italics."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.browser = QTextBrowser(self)
        self.browser.setOpenLinks(False)
        self.browser.setUndoRedoEnabled(False)
        self.browser.document().setDocumentMargin(8)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.browser)

        self._finals: dict[int, _Final] = {}
        self._partials: dict[int, str] = {}
        self._rows: list[int] = []  # segments that have a paragraph; paragraph number == index
        self._follow = True
        self._block_fmt = QTextBlockFormat()
        self._block_fmt.setBottomMargin(4)
        self._text_fmt = QTextCharFormat()
        self._time_fmt = QTextCharFormat()
        self._time_fmt.setForeground(TIME_COLOR)
        self._partial_fmt = QTextCharFormat()
        self._partial_fmt.setForeground(PARTIAL_COLOR)
        self._partial_fmt.setFontItalic(True)
        self._error_fmt = QTextCharFormat()
        self._error_fmt.setForeground(ERROR_COLOR)
        self._error_fmt.setFontWeight(QFont.Weight.Bold)

        bar = self.browser.verticalScrollBar()
        bar.valueChanged.connect(self._on_scrolled)
        bar.rangeChanged.connect(self._on_range_changed)

    # -- updates -----------------------------------------------------------------------------

    def set_partial(self, segment: int, text: str) -> None:
        """Show (or replace) the in-progress text of `segment`; empty text removes it."""
        if segment in self._finals:
            return
        text = text.strip()
        if text:
            if self._partials.get(segment) == text:
                return
            self._partials[segment] = text
        elif self._partials.pop(segment, None) is None:
            return
        self._render(segment)

    def add_final(
        self, segment: int, start: float, end: float, text: str, error: str | None = None
    ) -> bool:
        """Show the final of `segment` in place of its partial; False if it was already shown."""
        if segment in self._finals:
            return False
        self._finals[segment] = _Final(float(start), float(end), text.strip(), error)
        self._partials.pop(segment, None)
        self._render(segment)
        return True

    def clear(self) -> None:
        """Forget every segment and partial."""
        self._finals.clear()
        self._partials.clear()
        self._rows.clear()
        self.browser.clear()
        self.browser.setUndoRedoEnabled(False)
        self._follow = True

    # -- reading -----------------------------------------------------------------------------

    def final_text(self) -> str:
        """The final texts in segment order, joined by spaces (failed segments left out)."""
        return " ".join(
            f.text for _, f in sorted(self._finals.items()) if f.error is None and f.text
        )

    def segments(self) -> list[tuple[int, float, float, str]]:
        """Every final received, failed ones included: (segment, start, end, text)."""
        return [(n, f.start, f.end, f.text) for n, f in sorted(self._finals.items())]

    def partial_text(self) -> str | None:
        """The in-progress text (partials of unfinished segments, in order), or None."""
        if not self._partials:
            return None
        return " ".join(text for _, text in sorted(self._partials.items()))

    def scroll_to_start(self) -> None:
        """Show the beginning and stop following the end until the user scrolls down to it."""
        self._follow = False
        self.browser.verticalScrollBar().setValue(0)

    def is_following(self) -> bool:
        """Whether updates scroll the view to the bottom (False once the user scrolls up)."""
        return self._follow

    # -- rendering ---------------------------------------------------------------------------

    def _shown(self, segment: int) -> bool:
        final = self._finals.get(segment)
        if final is None:
            return segment in self._partials
        return final.error is not None or bool(final.text)

    def _render(self, segment: int) -> None:
        """Insert, rewrite or remove the paragraph of `segment` to match its state."""
        index = bisect_left(self._rows, segment)
        present = index < len(self._rows) and self._rows[index] == segment
        shown = self._shown(segment)
        if not present and not shown:
            return
        doc = self.browser.document()
        cursor = QTextCursor(doc)
        cursor.beginEditBlock()
        try:
            if present and shown:
                block = doc.findBlockByNumber(index)
                cursor.setPosition(block.position())
                cursor.setPosition(
                    block.position() + block.length() - 1, QTextCursor.MoveMode.KeepAnchor
                )
                cursor.removeSelectedText()
                self._write(cursor, segment)
            elif present:
                self._remove_row(cursor, index)
                del self._rows[index]
            else:
                self._insert_row(cursor, index)
                self._write(cursor, segment)
                self._rows.insert(index, segment)
        finally:
            cursor.endEditBlock()

    def _insert_row(self, cursor: QTextCursor, index: int) -> None:
        """Leave `cursor` in a new empty paragraph that becomes paragraph number `index`."""
        doc = self.browser.document()
        if not self._rows:  # the document's single empty paragraph becomes the first row
            cursor.movePosition(QTextCursor.MoveOperation.Start)
            cursor.setBlockFormat(self._block_fmt)
        elif index == len(self._rows):
            cursor.movePosition(QTextCursor.MoveOperation.End)
            cursor.insertBlock(self._block_fmt, self._text_fmt)
        else:
            position = doc.findBlockByNumber(index).position()
            cursor.setPosition(position)
            cursor.insertBlock(self._block_fmt, self._text_fmt)
            cursor.setPosition(position)

    def _remove_row(self, cursor: QTextCursor, index: int) -> None:
        doc = self.browser.document()
        block = doc.findBlockByNumber(index)
        end_of_text = block.position() + block.length() - 1
        if len(self._rows) == 1:
            cursor.setPosition(block.position())
            cursor.setPosition(end_of_text, QTextCursor.MoveMode.KeepAnchor)
        elif index == len(self._rows) - 1:  # take the separator before it with it
            previous = block.previous()
            cursor.setPosition(previous.position() + previous.length() - 1)
            cursor.setPosition(end_of_text, QTextCursor.MoveMode.KeepAnchor)
        else:  # take its own separator with it
            cursor.setPosition(block.position())
            cursor.setPosition(block.next().position(), QTextCursor.MoveMode.KeepAnchor)
        cursor.removeSelectedText()

    def _write(self, cursor: QTextCursor, segment: int) -> None:
        final = self._finals.get(segment)
        if final is None:
            cursor.insertText(self._partials[segment] + ELLIPSIS, self._partial_fmt)
            return
        cursor.insertText(f"[{clock(final.start)}] ", self._time_fmt)
        if final.error is not None:
            marker = QTextCharFormat(self._error_fmt)
            marker.setToolTip(final.error)
            cursor.insertText(FAILED_MARKER, marker)
        else:
            cursor.insertText(final.text, self._text_fmt)

    # -- following the end -------------------------------------------------------------------

    def _on_scrolled(self, value: int) -> None:
        self._follow = value >= self.browser.verticalScrollBar().maximum() - FOLLOW_SLACK_PX

    def _on_range_changed(self, _minimum: int, maximum: int) -> None:
        if self._follow:
            self.browser.verticalScrollBar().setValue(maximum)
