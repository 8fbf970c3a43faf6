"""HistoryPane: browse, search, rename, delete, export and copy past dictations.

Contract:
- Works over the `History` given to it (opened on the GUI thread, see history.py's thread
  rule); it never caches dictations beyond what is on screen.
- The list shows the newest LIST_LIMIT dictations, newest first, or, while the search box
  holds text, `History.search` of that text, SEARCH_DEBOUNCE_MS after the last keystroke
  (Enter searches at once). Each item: title, local date, duration (and status unless
  "done"); its tooltip is the preview; its `Qt.UserRole` data is the dictation id.
- An empty list is replaced by a placeholder: "No dictations yet" (or "No matches" while
  searching).
- Selecting an item loads the dictation into the read-only detail view (a TranscriptView)
  and emits `dictation_opened(id)`; `refresh()` keeps the selection (reloading its detail,
  without emitting) when the dictation is still listed.
- Actions on the selected dictation, each usable without a dialog (the buttons only add the
  dialog): `rename_selected(title)`, `delete_selected(confirm)`, `export_selected(path, fmt)`,
  `copy_selected()`. Each returns False when nothing was done (no selection, empty title,
  confirmation refused). A dictation deleted elsewhere (`DictationNotFound`) makes the pane
  refresh instead of raising.

Thread rule: GUI thread only. The app calls `refresh()` after a dictation finishes.
"""

from __future__ import annotations

import re
from pathlib import Path

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QAction, QFont, QKeySequence, QPalette
from PySide6.QtWidgets import (
    QApplication,
    QFileDialog,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMessageBox,
    QPushButton,
    QSplitter,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from desktop.history import DictationNotFound, DictationRecord, DictationSummary, History
from desktop.widgets._format import duration, local_time
from desktop.widgets.transcript_view import TranscriptView

SEARCH_DEBOUNCE_MS = 200
LIST_LIMIT = 500
EMPTY_TEXT = "No dictations yet"
NO_MATCH_TEXT = "No matches"
EXPORT_FILTERS = {
    "txt": "Plain text (*.txt)",
    "srt": "SubRip subtitles (*.srt)",
    "vtt": "WebVTT subtitles (*.vtt)",
    "json": "JSON (*.json)",
}
_UNSAFE_FILENAME = re.compile(r'[\\/:*?"<>|\x00-\x1f]+')


def item_text(summary: DictationSummary) -> str:
    """The two lines of a list item."""
    meta = f"{local_time(summary.created)} · {duration(summary.duration)}"
    if summary.status != "done":
        meta += f" · {summary.status}"
    return f"{summary.title}\n{meta}"


def export_filename(title: str, fmt: str) -> str:
    """A file name for exporting a dictation titled `title`."""
    stem = _UNSAFE_FILENAME.sub("_", title).strip(" ._") or "dictation"
    return f"{stem}.{fmt}"


def _mute(label: QLabel) -> None:
    """Draw `label` in the style's secondary text colour (still readable, unlike disabled)."""
    palette = label.palette()
    palette.setColor(
        QPalette.ColorRole.WindowText, palette.color(QPalette.ColorRole.PlaceholderText)
    )
    label.setPalette(palette)


class HistoryPane(QWidget):
    """Dictation history browser; see the module docstring."""

    dictation_opened = Signal(int)

    def __init__(self, history: History, parent: QWidget | None = None,
                 orientation: Qt.Orientation = Qt.Orientation.Horizontal) -> None:
        """`orientation`: list beside (horizontal) or above (vertical) the transcript."""
        super().__init__(parent)
        self._orientation = orientation
        self._history = history
        self._shown: int | None = None  # id in the detail view
        self._refreshing = False
        self._export_dir = Path.home()

        self.search = QLineEdit(self)
        self.search.setPlaceholderText("Search dictations")
        self.search.setClearButtonEnabled(True)
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(SEARCH_DEBOUNCE_MS)
        self._debounce.timeout.connect(self.refresh)
        self.search.textChanged.connect(self._on_search_edited)
        self.search.returnPressed.connect(self.refresh)

        self.list = QListWidget(self)
        self.list.setUniformItemSizes(True)
        self.list.setAlternatingRowColors(True)
        self.list.setSpacing(2)
        self.list.currentItemChanged.connect(self._on_current_changed)
        self.placeholder = QLabel(EMPTY_TEXT, self)
        self.placeholder.setAlignment(Qt.AlignmentFlag.AlignCenter)
        _mute(self.placeholder)
        self.stack = QStackedWidget(self)
        self.stack.addWidget(self.list)
        self.stack.addWidget(self.placeholder)

        self.title_label = QLabel(self)
        self.title_label.setTextFormat(Qt.TextFormat.PlainText)
        bold = QFont(self.title_label.font())
        bold.setBold(True)
        bold.setPointSizeF(bold.pointSizeF() * 1.15)
        self.title_label.setFont(bold)
        self.meta_label = QLabel(self)
        self.meta_label.setTextFormat(Qt.TextFormat.PlainText)
        _mute(self.meta_label)
        self.detail = TranscriptView(self)

        self.rename_button = QPushButton("Rename…", self)
        self.delete_button = QPushButton("Delete…", self)
        self.export_button = QPushButton("Export…", self)
        self.copy_button = QPushButton("Copy", self)
        self.rename_button.clicked.connect(self._ask_rename)
        self.delete_button.clicked.connect(lambda: self.delete_selected(confirm=True))
        self.export_button.clicked.connect(self._ask_export)
        self.copy_button.clicked.connect(self.copy_selected)
        self._add_list_actions()
        self._lay_out()
        self.refresh()

    def _add_list_actions(self) -> None:
        """Keyboard shortcuts and a context menu on the list, mirroring the buttons."""
        for label, keys, slot in (
            ("Rename…", QKeySequence(Qt.Key.Key_F2), self._ask_rename),
            ("Delete…", QKeySequence(QKeySequence.StandardKey.Delete), self._ask_delete),
            ("Copy text", QKeySequence(QKeySequence.StandardKey.Copy), self.copy_selected),
        ):
            action = QAction(label, self.list)
            action.setShortcut(keys)
            action.setShortcutContext(Qt.ShortcutContext.WidgetShortcut)
            action.triggered.connect(slot)
            self.list.addAction(action)
        self.list.setContextMenuPolicy(Qt.ContextMenuPolicy.ActionsContextMenu)

    def _lay_out(self) -> None:
        left = QWidget(self)
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.addWidget(self.search)
        left_layout.addWidget(self.stack)

        buttons = QHBoxLayout()
        for button in (self.rename_button, self.delete_button, self.export_button):
            buttons.addWidget(button)
        buttons.addStretch(1)
        buttons.addWidget(self.copy_button)
        right = QWidget(self)
        right_layout = QVBoxLayout(right)
        right_layout.setContentsMargins(0, 0, 0, 0)
        right_layout.addWidget(self.title_label)
        right_layout.addWidget(self.meta_label)
        right_layout.addWidget(self.detail, 1)
        right_layout.addLayout(buttons)

        splitter = QSplitter(self._orientation, self)
        splitter.addWidget(left)
        splitter.addWidget(right)
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([280, 520] if self._orientation == Qt.Orientation.Horizontal
                          else [220, 380])
        layout = QVBoxLayout(self)
        layout.addWidget(splitter)

    # -- list --------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Reload the list (search results while the search box holds text)."""
        self._debounce.stop()
        query = self.search.text().strip()
        if query:
            summaries = self._history.search(query, LIST_LIMIT)
        else:
            summaries = self._history.list(LIST_LIMIT)
        keep = self.selected_id()
        self._refreshing = True
        try:
            self.list.blockSignals(True)
            try:
                self.list.clear()
                for summary in summaries:
                    self.list.addItem(self._make_item(summary))
                row = self._row_of(keep)
                if row is not None:
                    self.list.setCurrentRow(row)
            finally:
                self.list.blockSignals(False)
            self._show(keep if row is not None else None, opened=False)
        finally:
            self._refreshing = False
        self.placeholder.setText(NO_MATCH_TEXT if query else EMPTY_TEXT)
        self.stack.setCurrentWidget(self.list if summaries else self.placeholder)

    def select(self, dictation_id: int) -> bool:
        """Select (and show) a dictation, clearing the search or reloading if it is not
        listed; False if the history has no such dictation."""
        row = self._row_of(dictation_id)
        if row is None:
            if self.search.text():
                self.search.blockSignals(True)
                self.search.clear()
                self.search.blockSignals(False)
            self.refresh()
            row = self._row_of(dictation_id)
            if row is None:
                return False
        self.list.setCurrentRow(row)
        self.list.scrollToItem(self.list.item(row))
        return True

    def selected_id(self) -> int | None:
        item = self.list.currentItem()
        return None if item is None else int(item.data(Qt.ItemDataRole.UserRole))

    def ids(self) -> list[int]:
        """The ids listed, top to bottom."""
        items = (self.list.item(row) for row in range(self.list.count()))
        return [int(item.data(Qt.ItemDataRole.UserRole)) for item in items]

    def _make_item(self, summary: DictationSummary) -> QListWidgetItem:
        item = QListWidgetItem(item_text(summary))
        item.setData(Qt.ItemDataRole.UserRole, summary.id)
        item.setToolTip(summary.preview or "(no text)")
        return item

    def _row_of(self, dictation_id: int | None) -> int | None:
        if dictation_id is None:
            return None
        for row in range(self.list.count()):
            if self.list.item(row).data(Qt.ItemDataRole.UserRole) == dictation_id:
                return row
        return None

    def _on_search_edited(self, _text: str) -> None:
        self._debounce.start()

    def _on_current_changed(
        self, current: QListWidgetItem | None, _previous: QListWidgetItem | None
    ) -> None:
        dictation_id = None if current is None else current.data(Qt.ItemDataRole.UserRole)
        self._show(dictation_id, opened=True)

    # -- detail ------------------------------------------------------------------------------

    def _show(self, dictation_id: int | None, *, opened: bool) -> None:
        record: DictationRecord | None = None
        if dictation_id is not None:
            try:
                record = self._history.get(dictation_id)
            except DictationNotFound:
                self._vanished()
                return
        self.detail.clear()
        self._shown = None if record is None else record.id
        for button in self._action_buttons():
            button.setEnabled(record is not None)
        if record is None:
            self.title_label.clear()
            self.meta_label.clear()
            return
        self.title_label.setText(record.title)
        meta = [local_time(record.created), duration(record.duration), record.server]
        if record.status != "done":
            meta.append(record.status)
        self.meta_label.setText(" · ".join(meta))
        for seg in record.segments:
            self.detail.add_final(seg.segment, seg.start, seg.end, seg.text)
        self.detail.scroll_to_start()  # a stored dictation reads from the top
        if opened:
            self.dictation_opened.emit(record.id)

    def _action_buttons(self) -> tuple[QPushButton, ...]:
        return (self.rename_button, self.delete_button, self.export_button, self.copy_button)

    def _vanished(self) -> None:
        """The selected dictation was deleted elsewhere: reload, showing nothing for it."""
        if self._refreshing:
            self.list.setCurrentRow(-1)
            self._show(None, opened=False)
        else:
            self.refresh()

    # -- actions -----------------------------------------------------------------------------

    def rename_selected(self, title: str) -> bool:
        dictation_id = self.selected_id()
        if dictation_id is None or not title.strip():
            return False
        try:
            self._history.rename(dictation_id, title)
        except DictationNotFound:
            self._vanished()
            return False
        self.refresh()
        return True

    def delete_selected(self, confirm: bool = True) -> bool:
        """Delete the selected dictation (asking first when `confirm`), then select the one
        that took its place in the list."""
        dictation_id = self.selected_id()
        if dictation_id is None:
            return False
        if confirm and not self._confirm_delete(self.title_label.text()):
            return False
        row = self.list.currentRow()
        deleted = self._history.delete(dictation_id)
        self.refresh()
        if self.list.count():
            self.list.setCurrentRow(min(row, self.list.count() - 1))
        return deleted

    def export_selected(self, path: Path, fmt: str) -> bool:
        """Write the selected dictation to `path` as `fmt` (txt, srt, vtt or json).

        Raises ValueError for an unknown format and OSError when the file cannot be written.
        """
        dictation_id = self.selected_id()
        if dictation_id is None:
            return False
        try:
            document = self._history.export(dictation_id, fmt)
        except DictationNotFound:
            self._vanished()
            return False
        Path(path).write_text(document, encoding="utf-8", newline="")
        return True

    def copy_selected(self) -> bool:
        """Put the selected dictation's text on the clipboard."""
        dictation_id = self.selected_id()
        if dictation_id is None:
            return False
        try:
            record = self._history.get(dictation_id)
        except DictationNotFound:
            self._vanished()
            return False
        QApplication.clipboard().setText(record.text)
        return True

    # -- dialogs (thin wrappers over the actions) --------------------------------------------

    def _ask_rename(self) -> None:
        if self.selected_id() is None:
            return
        title, ok = QInputDialog.getText(
            self, "Rename dictation", "Title:", QLineEdit.EchoMode.Normal, self.title_label.text()
        )
        if ok:
            self.rename_selected(title)

    def _ask_delete(self) -> None:
        self.delete_selected(confirm=True)

    def _confirm_delete(self, title: str) -> bool:
        box = QMessageBox(self)
        box.setIcon(QMessageBox.Icon.Question)
        box.setWindowTitle("Delete dictation")
        box.setTextFormat(Qt.TextFormat.PlainText)
        box.setText(f"Delete “{title}”? This cannot be undone.")
        box.setStandardButtons(QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No)
        box.setDefaultButton(QMessageBox.StandardButton.No)
        return box.exec() == QMessageBox.StandardButton.Yes

    def _ask_export(self) -> None:
        if self.selected_id() is None:
            return
        suggested = self._export_dir / export_filename(self.title_label.text(), "txt")
        name, chosen = QFileDialog.getSaveFileName(
            self,
            "Export dictation",
            str(suggested),
            ";;".join(EXPORT_FILTERS.values()),
            EXPORT_FILTERS["txt"],
        )
        if not name:
            return
        path = Path(name)
        fmt = path.suffix.lower().lstrip(".")
        if fmt not in EXPORT_FILTERS:
            fmt = next((f for f, label in EXPORT_FILTERS.items() if label == chosen), "txt")
            path = path.with_name(f"{path.name}.{fmt}")
        self._export_dir = path.parent
        try:
            self.export_selected(path, fmt)
        except OSError as exc:
            QMessageBox.warning(
                self, "Export failed", f"Could not write {path}:\n{exc.strerror or exc}"
            )
