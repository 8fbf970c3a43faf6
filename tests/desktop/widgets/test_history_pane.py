"""HistoryPane over a real History in tmp_path: list, search, detail, actions, dialogs."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import srt
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication, QFileDialog, QInputDialog, QMessageBox

from desktop.history import DictationNotFound, History
from desktop.journal import Journal
from desktop.widgets._format import local_time
from desktop.widgets.history_pane import (
    EMPTY_TEXT,
    EXPORT_FILTERS,
    NO_MATCH_TEXT,
    HistoryPane,
    export_filename,
)

T0 = datetime(2026, 11, 20, 9, 30, tzinfo=UTC)


def add(h: History, title: str, texts: list[str], hours: int, duration: float = 0.0) -> int:
    """A finished dictation created `hours` after T0, one 2-second segment per text."""
    did = h.start_dictation(title, server="office-gpu", created=T0 + timedelta(hours=hours))
    for n, text in enumerate(texts):
        h.add_segment(did, n, n * 2.0, n * 2.0 + 1.8, text)
    h.finish(did, duration or len(texts) * 2.0)
    return did


@pytest.fixture
def three(hist: History) -> tuple[int, int, int]:
    """Three dictations, oldest first."""
    return (
        add(hist, "Shopping list", ["Buy apples and pears.", "Also bread."], 0),
        add(hist, "Meeting notes", ["The banana budget is approved.", "Next review Friday."], 1),
        add(hist, "Letter to Anna", ["Dear Anna, thank you for the book."], 2, duration=83.0),
    )


@pytest.fixture
def make_pane(qtbot, hist: History):
    def make() -> HistoryPane:
        pane = HistoryPane(hist)
        qtbot.addWidget(pane)
        pane.resize(820, 420)
        return pane

    return make


def test_lists_newest_first_with_details(make_pane, three) -> None:
    shopping, meeting, letter = three
    pane = make_pane()
    assert pane.ids() == [letter, meeting, shopping]
    item = pane.list.item(0)
    assert item.data(Qt.ItemDataRole.UserRole) == letter
    assert item.text() == f"Letter to Anna\n{local_time(T0 + timedelta(hours=2))} · 1:23"
    assert item.toolTip() == "Dear Anna, thank you for the book."
    assert pane.stack.currentWidget() is pane.list
    assert pane.selected_id() is None
    assert not pane.copy_button.isEnabled()


def test_unfinished_dictations_show_their_status(make_pane, hist: History) -> None:
    hist.start_dictation("Still going", created=T0)
    pane = make_pane()
    assert pane.list.item(0).text().endswith(" · recording")
    assert pane.list.item(0).toolTip() == "(no text)"


def test_search_filters_after_the_debounce(qtbot, make_pane, three) -> None:
    shopping, meeting, letter = three
    pane = make_pane()
    qtbot.keyClicks(pane.search, "bana")
    assert pane.ids() == [letter, meeting, shopping]  # not yet: debounced
    qtbot.waitUntil(lambda: pane.ids() == [meeting], timeout=2000)

    pane.search.clear()
    qtbot.keyClicks(pane.search, "anna")  # a title word
    qtbot.waitUntil(lambda: pane.ids() == [letter], timeout=2000)

    pane.search.setText("zebra")
    qtbot.waitUntil(lambda: pane.stack.currentWidget() is pane.placeholder, timeout=2000)
    assert pane.placeholder.text() == NO_MATCH_TEXT

    pane.search.clear()  # empty search lists everything again
    qtbot.waitUntil(lambda: pane.ids() == [letter, meeting, shopping], timeout=2000)
    assert pane.stack.currentWidget() is pane.list


def test_enter_searches_at_once(qtbot, make_pane, three) -> None:
    pane = make_pane()
    qtbot.keyClicks(pane.search, "friday")
    qtbot.keyClick(pane.search, Qt.Key.Key_Return)
    assert pane.ids() == [three[1]]


def test_selecting_shows_the_transcript(qtbot, make_pane, three) -> None:
    shopping, _, _ = three
    pane = make_pane()
    with qtbot.waitSignal(pane.dictation_opened) as opened:
        pane.list.setCurrentRow(2)
    assert opened.args == [shopping]
    assert pane.selected_id() == shopping
    assert pane.detail.final_text() == "Buy apples and pears. Also bread."
    assert pane.detail.browser.toPlainText() == "[0:00] Buy apples and pears.\n[0:02] Also bread."
    assert pane.title_label.text() == "Shopping list"
    assert pane.meta_label.text().endswith(" · 0:04 · office-gpu")
    assert pane.copy_button.isEnabled()


def test_select_by_id(qtbot, make_pane, hist: History, three) -> None:
    shopping, meeting, _ = three
    pane = make_pane()
    with qtbot.waitSignal(pane.dictation_opened) as opened:
        assert pane.select(meeting)
    assert opened.args == [meeting]
    assert pane.detail.final_text().startswith("The banana budget")
    assert not pane.select(9999)

    pane.search.setText("letter")
    pane.refresh()
    assert pane.select(shopping)  # hidden by the search: the search is cleared
    assert pane.search.text() == ""
    assert pane.selected_id() == shopping

    newest = add(hist, "Just finished", ["fresh"], 5)  # not listed until a refresh
    assert pane.select(newest)
    assert pane.ids()[0] == newest


def test_refresh_keeps_the_selection_without_reopening(qtbot, make_pane, hist, three) -> None:
    _, meeting, _ = three
    pane = make_pane()
    pane.select(meeting)
    hist.add_segment(meeting, 2, 4.0, 5.0, "Added later.")
    opened: list[int] = []
    pane.dictation_opened.connect(opened.append)
    pane.refresh()
    assert pane.selected_id() == meeting
    assert pane.detail.final_text().endswith("Added later.")
    assert opened == []


def test_rename_selected(make_pane, hist: History, three) -> None:
    shopping, _, _ = three
    pane = make_pane()
    assert not pane.rename_selected("nothing selected")
    pane.select(shopping)
    assert pane.rename_selected("  Groceries ")
    assert hist.get(shopping).title == "Groceries"
    assert pane.list.currentItem().text().startswith("Groceries\n")
    assert pane.title_label.text() == "Groceries"
    assert not pane.rename_selected("   ")
    assert hist.get(shopping).title == "Groceries"


def test_rename_button_asks_for_a_title(qtbot, monkeypatch, make_pane, hist, three) -> None:
    shopping, _, _ = three
    pane = make_pane()
    pane.select(shopping)
    asked = []

    def get_text(parent, title, label, echo, text):
        asked.append(text)
        return "From the dialog", True

    monkeypatch.setattr(QInputDialog, "getText", get_text)
    qtbot.mouseClick(pane.rename_button, Qt.MouseButton.LeftButton)
    assert asked == ["Shopping list"]
    assert hist.get(shopping).title == "From the dialog"

    monkeypatch.setattr(QInputDialog, "getText", lambda *args: ("Cancelled", False))
    qtbot.mouseClick(pane.rename_button, Qt.MouseButton.LeftButton)
    assert hist.get(shopping).title == "From the dialog"


def test_delete_selected(make_pane, hist: History, three) -> None:
    shopping, meeting, letter = three
    pane = make_pane()
    assert not pane.delete_selected(confirm=False)
    pane.select(meeting)
    assert pane.delete_selected(confirm=False)
    with pytest.raises(DictationNotFound):
        hist.get(meeting)
    assert pane.ids() == [letter, shopping]
    assert pane.selected_id() == shopping  # the next one takes its place
    assert pane.delete_selected(confirm=False)
    assert pane.selected_id() == letter  # the last row was deleted: the one above
    assert pane.delete_selected(confirm=False)
    assert pane.selected_id() is None
    assert pane.stack.currentWidget() is pane.placeholder
    assert pane.placeholder.text() == EMPTY_TEXT
    assert pane.detail.browser.toPlainText() == ""


def test_delete_asks_first(qtbot, monkeypatch, make_pane, hist, three) -> None:
    _, meeting, _ = three
    pane = make_pane()
    pane.select(meeting)
    answers = [QMessageBox.StandardButton.No, QMessageBox.StandardButton.Yes]
    shown: list[str] = []

    def exec_(box: QMessageBox) -> QMessageBox.StandardButton:
        shown.append(box.text())
        return answers.pop(0)

    monkeypatch.setattr(QMessageBox, "exec", exec_)
    assert not pane.delete_selected()
    assert hist.get(meeting).title == "Meeting notes"
    qtbot.mouseClick(pane.delete_button, Qt.MouseButton.LeftButton)
    with pytest.raises(DictationNotFound):
        hist.get(meeting)
    assert shown == ["Delete “Meeting notes”? This cannot be undone."] * 2


def test_delete_selected_deletes_the_journaled_audio(make_pane, hist: History) -> None:
    journal = Journal(hist.path.parent / "journal")  # the history's default journal
    with journal.open("spoken") as writer:
        writer.append(np.zeros(1600, np.float32))
    did = hist.start_dictation("Spoken", audio_path=writer.entry.pcm_path)
    pane = make_pane()
    pane.select(did)
    assert pane.delete_selected(confirm=False)
    assert pane.ids() == []
    assert list(journal.folder.iterdir()) == []


@pytest.mark.parametrize("fmt", ["txt", "srt", "vtt", "json"])
def test_export_selected(tmp_path: Path, make_pane, hist: History, three, fmt: str) -> None:
    _, meeting, _ = three
    pane = make_pane()
    path = tmp_path / f"out.{fmt}"
    assert not pane.export_selected(path, fmt)
    pane.select(meeting)
    assert pane.export_selected(path, fmt)
    written = path.read_text(encoding="utf-8")
    assert written == hist.export(meeting, fmt)
    if fmt == "srt":
        subs = list(srt.parse(written))
        assert [s.content for s in subs] == [
            "The banana budget is approved.",
            "Next review Friday.",
        ]
        assert subs[1].start == timedelta(seconds=2)
    elif fmt == "json":
        doc = json.loads(written)
        assert doc[0]["file"] == "Meeting notes"
        assert doc[0]["text"] == "The banana budget is approved. Next review Friday."
    elif fmt == "vtt":
        assert written.startswith("WEBVTT")
    else:
        assert written == "The banana budget is approved. Next review Friday.\n"


def test_export_rejects_unknown_formats(tmp_path: Path, make_pane, three) -> None:
    pane = make_pane()
    pane.select(three[0])
    with pytest.raises(ValueError, match="unknown export format"):
        pane.export_selected(tmp_path / "x.doc", "doc")


def test_export_button_uses_the_chosen_filter(
    qtbot, monkeypatch, tmp_path: Path, make_pane, three
) -> None:
    pane = make_pane()
    pane.select(three[1])
    answers = [
        (str(tmp_path / "notes"), EXPORT_FILTERS["srt"]),  # no suffix: the filter's is added
        (str(tmp_path / "typed.json"), EXPORT_FILTERS["txt"]),  # a typed suffix wins
        ("", ""),  # cancelled
    ]
    suggested: list[str] = []

    def get_save_file_name(parent, caption, directory, filters, selected):
        suggested.append(directory)
        assert filters.split(";;") == list(EXPORT_FILTERS.values())
        return answers.pop(0)

    monkeypatch.setattr(QFileDialog, "getSaveFileName", get_save_file_name)
    for _ in range(3):
        qtbot.mouseClick(pane.export_button, Qt.MouseButton.LeftButton)
    assert list(srt.parse((tmp_path / "notes.srt").read_text(encoding="utf-8")))
    assert json.loads((tmp_path / "typed.json").read_text(encoding="utf-8"))[0]["text"]
    assert Path(suggested[0]).name == "Meeting notes.txt"
    assert Path(suggested[1]).parent == tmp_path  # remembers the folder


def test_export_filename_is_safe() -> None:
    assert export_filename('a/b: "c"?', "srt") == "a_b_ _c.srt"
    assert export_filename("...", "txt") == "dictation.txt"


def test_copy_selected(make_pane, three) -> None:
    pane = make_pane()
    QApplication.clipboard().setText("before")
    assert not pane.copy_selected()
    assert QApplication.clipboard().text() == "before"
    pane.select(three[0])
    assert pane.copy_selected()
    assert QApplication.clipboard().text() == "Buy apples and pears. Also bread."


def test_empty_history_shows_a_placeholder(make_pane, hist: History) -> None:
    pane = make_pane()
    pane.show()
    assert pane.stack.currentWidget() is pane.placeholder
    assert pane.placeholder.isVisible()
    assert pane.placeholder.text() == EMPTY_TEXT == "No dictations yet"
    for button in (pane.rename_button, pane.delete_button, pane.export_button, pane.copy_button):
        assert not button.isEnabled()
    assert not pane.copy_selected()

    did = add(hist, "First one", ["hello"], 0)
    pane.refresh()  # what the app does when a dictation finishes
    assert pane.ids() == [did]
    assert pane.list.isVisible()


def test_dictation_deleted_elsewhere(make_pane, hist: History, three) -> None:
    shopping, meeting, letter = three
    pane = make_pane()
    pane.select(meeting)
    with History(hist.path) as other:  # e.g. another window
        other.delete(meeting)
    assert not pane.copy_selected()  # refreshes instead of raising
    assert pane.ids() == [letter, shopping]
    assert pane.selected_id() is None
    assert pane.detail.browser.toPlainText() == ""

    pane.select(shopping)
    hist.delete(shopping)
    assert not pane.rename_selected("gone")
    assert pane.ids() == [letter]
    pane.select(letter)
    hist.delete(letter)
    assert not pane.export_selected(Path("unused.txt"), "txt")
    assert pane.stack.currentWidget() is pane.placeholder


def test_selecting_a_dictation_deleted_elsewhere(make_pane, hist: History, three) -> None:
    pane = make_pane()
    hist.delete(three[0])
    pane.list.setCurrentRow(2)  # still listed, gone from the history
    assert pane.ids() == [three[2], three[1]]
    assert pane.selected_id() is None


def test_html_in_titles_and_text_is_literal(make_pane, hist: History) -> None:
    did = add(hist, "<i>odd</i> & title", ["<b>bold?</b> & more"], 0)
    pane = make_pane()
    pane.select(did)
    assert pane.list.item(0).text().startswith("<i>odd</i> & title\n")
    assert pane.title_label.text() == "<i>odd</i> & title"
    assert pane.title_label.textFormat() == Qt.TextFormat.PlainText
    assert pane.detail.final_text() == "<b>bold?</b> & more"


def test_screenshot_with_three_dictations(qtbot, make_pane, three, artifacts: Path) -> None:
    pane = make_pane()
    pane.show()
    qtbot.waitExposed(pane)
    pane.select(three[1])
    path = artifacts / "history_pane.png"
    assert pane.grab().save(str(path))
    assert path.stat().st_size > 0
