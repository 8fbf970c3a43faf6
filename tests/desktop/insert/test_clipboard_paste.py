"""The paste queue's timing and clipboard handling, in process on Qt's offscreen clipboard.

The "target application" is a stand-in KeySender that, like a real one, fetches the
clipboard some time after it received the paste shortcut. The real thing (another process
over X11) is test_inserter_x11.py.
"""

from __future__ import annotations

import logging

import pytest
from PySide6.QtCore import QMimeData, QTimer
from PySide6.QtGui import QGuiApplication

from desktop.insert.clipboard_paste import ClipboardPaster
from desktop.insert.errors import InsertionError
from desktop.insert.joiner import Backspace, Text


class Target:
    """A text field that pastes `fetch_after_ms` after Ctrl+V (None: never)."""

    def __init__(self, fetch_after_ms: int | None = 5, fail_on_paste: int | None = None):
        self.name = "stand-in"
        self.field = ""
        self.fetch_after_ms = fetch_after_ms
        self.fail_on_paste = fail_on_paste
        self.pastes = 0

    def type_text(self, text: str) -> None:
        self.field += text

    def backspace(self, count: int) -> None:
        self.field = self.field[:len(self.field) - count]

    def paste_shortcut(self) -> None:
        self.pastes += 1
        if self.pastes == self.fail_on_paste:
            raise InsertionError("the paste shortcut could not be sent")
        if self.fetch_after_ms is not None:
            QTimer.singleShot(self.fetch_after_ms, self._fetch)

    def _fetch(self) -> None:
        self.field += QGuiApplication.clipboard().text()


def set_previous() -> None:
    data = QMimeData()
    data.setText("previous")
    data.setHtml("<b>previous</b>")
    QGuiApplication.clipboard().setMimeData(data)


def wait_idle(qtbot, paster: ClipboardPaster, timeout: int = 5000) -> None:
    done: list[bool] = []
    paster.when_idle(lambda: done.append(True))
    qtbot.waitUntil(lambda: bool(done), timeout=timeout)


def test_pastes_in_order_then_restores_every_format(qtbot) -> None:
    set_previous()
    target = Target()
    paster = ClipboardPaster(target, settle_ms=50)
    paster.apply([Text("Hello there.")])
    paster.apply([Text(" How are you")])
    paster.apply([Backspace(4), Text(" do?")])
    assert paster.busy
    wait_idle(qtbot, paster)
    assert target.field == "Hello there. How are do?"
    data = QGuiApplication.clipboard().mimeData()
    assert data.text() == "previous" and data.html() == "<b>previous</b>"
    assert not paster.busy


def test_a_slow_target_is_waited_for(qtbot) -> None:
    set_previous()
    target = Target(fetch_after_ms=400)  # far beyond settle_ms
    paster = ClipboardPaster(target, settle_ms=50, max_settle_ms=3000)
    paster.apply([Text("one"), Text(" two")])
    wait_idle(qtbot, paster)
    assert target.field == "one two"
    assert QGuiApplication.clipboard().text() == "previous"


def test_no_fetch_gives_up_after_max_settle(qtbot, caplog) -> None:
    set_previous()
    target = Target(fetch_after_ms=None)
    paster = ClipboardPaster(target, settle_ms=20, max_settle_ms=200)
    with caplog.at_level(logging.INFO, logger="desktop.insert.clipboard_paste"):
        paster.apply([Text("lost")])
        wait_idle(qtbot, paster)
    assert "no fetch of the text seen within 200 ms" in caplog.text
    assert QGuiApplication.clipboard().text() == "previous"


def test_an_empty_clipboard_is_left_empty(qtbot) -> None:
    QGuiApplication.clipboard().clear()
    paster = ClipboardPaster(Target(), settle_ms=20)
    paster.apply([Text("x")])
    wait_idle(qtbot, paster)
    data = QGuiApplication.clipboard().mimeData()
    assert data is None or data.formats() == []


def test_a_clipboard_set_by_someone_else_meanwhile_is_kept(qtbot) -> None:
    set_previous()
    target = Target(fetch_after_ms=5)
    paster = ClipboardPaster(target, settle_ms=100)
    paster.apply([Text("dictated")])
    QTimer.singleShot(30, lambda: QGuiApplication.clipboard().setText("copied by the user"))
    wait_idle(qtbot, paster)
    assert target.field == "dictated"
    assert QGuiApplication.clipboard().text() == "copied by the user"


def test_first_failure_raises_later_ones_go_to_on_error(qtbot) -> None:
    set_previous()
    paster = ClipboardPaster(Target(fail_on_paste=1), settle_ms=20)
    with pytest.raises(InsertionError, match="could not be sent"):
        paster.apply([Text("a")])
    assert QGuiApplication.clipboard().text() == "previous" and not paster.busy

    target = Target(fail_on_paste=2)
    paster = ClipboardPaster(target, settle_ms=20)
    errors: list[InsertionError] = []
    paster.on_error = errors.append
    paster.apply([Text("a"), Text("b"), Text("c")])  # "b" fails later, "c" is dropped
    wait_idle(qtbot, paster)
    assert [str(e) for e in errors] == ["the paste shortcut could not be sent"]
    assert paster.error is errors[0]
    assert target.field == "a" and target.pastes == 2
    assert QGuiApplication.clipboard().text() == "previous"
