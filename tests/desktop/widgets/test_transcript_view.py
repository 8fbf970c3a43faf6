"""TranscriptView: partials, exactly-once finals in segment order, escaping, following."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
from PySide6.QtGui import QFont, QTextCharFormat, QTextCursor
from PySide6.QtWidgets import QApplication

from desktop.widgets.transcript_view import (
    ERROR_COLOR,
    FAILED_MARKER,
    PARTIAL_COLOR,
    TranscriptView,
)


@pytest.fixture
def view(qtbot) -> TranscriptView:
    widget = TranscriptView()
    qtbot.addWidget(widget)
    return widget


def lines(view: TranscriptView) -> list[str]:
    text = view.browser.toPlainText()
    return text.split("\n") if text else []


def char_format(view: TranscriptView, line: int, column: int) -> QTextCharFormat:
    """The format of the character at `column` of paragraph `line`."""
    block = view.browser.document().findBlockByNumber(line)
    cursor = QTextCursor(block)
    cursor.setPosition(block.position() + column + 1)  # charFormat() is of the char before
    return cursor.charFormat()


def test_partial_then_final_replaces_partial(view: TranscriptView) -> None:
    view.set_partial(0, "hello wor")
    assert lines(view) == ["hello wor…"]
    assert view.partial_text() == "hello wor"
    view.set_partial(0, "hello world how")
    assert lines(view) == ["hello world how…"]

    assert view.add_final(0, 1.2, 2.5, "Hello, world.") is True
    assert lines(view) == ["[0:01] Hello, world."]
    assert view.partial_text() is None
    assert view.segments() == [(0, 1.2, 2.5, "Hello, world.")]
    assert view.browser.document().blockCount() == 1


def test_partial_is_grey_italic_and_final_is_not(view: TranscriptView) -> None:
    view.add_final(0, 0.0, 1.0, "done")
    view.set_partial(1, "still talking")
    final_text = char_format(view, 0, len("[0:00] "))
    partial = char_format(view, 1, 0)
    assert partial.fontItalic()
    assert partial.foreground().color() == PARTIAL_COLOR
    assert not final_text.fontItalic()
    assert final_text.foreground().color() != PARTIAL_COLOR
    assert lines(view)[1].endswith("…")


def test_duplicate_final_is_shown_once(view: TranscriptView) -> None:
    assert view.add_final(3, 4.0, 5.0, "once")
    assert not view.add_final(3, 4.0, 5.0, "once")
    assert not view.add_final(3, 4.0, 5.5, "a different re-delivery")
    view.set_partial(3, "stale partial after the final")
    assert lines(view) == ["[0:04] once"]
    assert view.segments() == [(3, 4.0, 5.0, "once")]
    assert view.partial_text() is None


def test_out_of_order_finals_are_kept_in_segment_order(view: TranscriptView) -> None:
    view.set_partial(3, "three in progress")
    view.add_final(2, 20.0, 21.0, "two")
    view.add_final(0, 0.0, 1.0, "zero")
    view.set_partial(1, "one so")
    assert lines(view) == ["[0:00] zero", "one so…", "[0:20] two", "three in progress…"]
    view.add_final(1, 10.0, 11.0, "one")
    assert lines(view) == ["[0:00] zero", "[0:10] one", "[0:20] two", "three in progress…"]
    assert [s[0] for s in view.segments()] == [0, 1, 2]
    assert view.final_text() == "zero one two"
    assert view.partial_text() == "three in progress"


def test_failed_segment_shows_red_marker(view: TranscriptView) -> None:
    view.set_partial(1, "mumble")
    view.add_final(0, 0.0, 2.0, "before")
    view.add_final(1, 2.0, 4.0, "", error="worker crashed")
    view.add_final(2, 4.0, 6.0, "after")
    assert lines(view) == ["[0:00] before", f"[0:02] {FAILED_MARKER}", "[0:04] after"]
    marker = char_format(view, 1, len("[0:02] "))
    assert marker.foreground().color() == ERROR_COLOR
    assert marker.toolTip() == "worker crashed"
    assert view.final_text() == "before after"
    assert view.segments()[1] == (1, 2.0, 4.0, "")


def test_text_is_never_parsed_as_html(view: TranscriptView) -> None:
    view.add_final(0, 0.0, 1.0, "<b>&")
    view.set_partial(1, "<i>x</i> &amp;")
    assert lines(view) == ["[0:00] <b>&", "<i>x</i> &amp;…"]
    assert char_format(view, 0, len("[0:00] ") + 1).fontWeight() == QFont.Weight.Normal
    assert "&lt;b&gt;&amp;" in view.browser.toHtml()
    assert view.final_text() == "<b>&"


def test_final_text_and_empty_segments(view: TranscriptView) -> None:
    view.add_final(0, 0.0, 1.0, "  first ")
    view.add_final(1, 1.0, 2.0, "")  # silence: recorded, no paragraph
    view.add_final(2, 75.4, 76.0, "second")
    view.add_final(3, 3725.0, 3726.0, "third")
    assert view.final_text() == "first second third"
    assert lines(view) == ["[0:00] first", "[1:15] second", "[62:05] third"]
    assert [s[0] for s in view.segments()] == [0, 1, 2, 3]


def test_empty_partial_removes_it(view: TranscriptView) -> None:
    view.add_final(0, 0.0, 1.0, "a")
    view.set_partial(1, "b")
    view.set_partial(2, "c")
    view.set_partial(1, "   ")
    assert lines(view) == ["[0:00] a", "c…"]
    view.set_partial(2, "")
    assert lines(view) == ["[0:00] a"]
    assert view.partial_text() is None
    view.add_final(1, 1.0, 2.0, "")  # a silent final that replaces a vanished partial
    assert view.browser.document().blockCount() == 1


def test_clear(view: TranscriptView) -> None:
    view.add_final(0, 0.0, 1.0, "a")
    view.set_partial(1, "b")
    view.clear()
    assert lines(view) == []
    assert view.segments() == []
    assert view.partial_text() is None
    assert view.final_text() == ""
    view.add_final(0, 0.0, 1.0, "again")  # the same segment number is new after clear()
    assert lines(view) == ["[0:00] again"]


def test_random_updates_match_a_simple_model(view: TranscriptView) -> None:
    rng = random.Random(7)
    finals: dict[int, str] = {}
    partials: dict[int, str] = {}
    for step in range(600):
        segment = rng.randrange(40)
        if rng.random() < 0.6:
            text = rng.choice(["", f"p{step}"])
            view.set_partial(segment, text)
            if segment not in finals:
                if text:
                    partials[segment] = text
                else:
                    partials.pop(segment, None)
        else:
            text = rng.choice(["", f"f{step}"])
            view.add_final(segment, segment * 2.0, segment * 2.0 + 1, text)
            if segment not in finals:
                finals[segment] = text
                partials.pop(segment, None)
        expected = [
            f"[{n * 2 // 60}:{n * 2 % 60:02d}] {finals[n]}" if n in finals else partials[n] + "…"
            for n in sorted(finals.keys() | partials.keys())
            if partials.get(n) or finals.get(n)
        ]
        assert lines(view) == expected, step
    assert view.browser.document().blockCount() == max(1, len(lines(view)))


def test_thousand_segments_render_quickly(qtbot, view: TranscriptView) -> None:
    view.resize(600, 400)
    view.show()
    qtbot.waitExposed(view)
    began = time.perf_counter()
    for n in range(1000):
        view.set_partial(n, f"segment {n} in progress")
        view.set_partial(n, f"segment {n} in progress, a little longer now")
        view.add_final(n, n * 2.0, n * 2.0 + 1.5, f"Segment number {n} is final <ok> & done.")
    QApplication.processEvents()
    elapsed = time.perf_counter() - began
    assert len(lines(view)) == 1000
    assert lines(view)[999] == "[33:18] Segment number 999 is final <ok> & done."
    assert elapsed < 2.0, f"1000 segments took {elapsed:.2f} s"
    bar = view.browser.verticalScrollBar()
    assert bar.maximum() > 0 and bar.value() == bar.maximum()


def test_follows_the_end_unless_the_user_scrolled_up(qtbot, view: TranscriptView) -> None:
    view.resize(300, 150)
    view.show()
    qtbot.waitExposed(view)
    bar = view.browser.verticalScrollBar()
    for n in range(60):
        view.add_final(n, n, n + 1, f"line {n}")
    qtbot.waitUntil(lambda: bar.maximum() > 0)
    assert bar.value() == bar.maximum()

    bar.setValue(0)  # the user scrolls up to read
    assert not view.is_following()
    for n in range(60, 80):
        view.add_final(n, n, n + 1, f"line {n}")
        view.set_partial(n + 1, "more")
    QApplication.processEvents()
    assert bar.value() == 0

    bar.setValue(bar.maximum())  # back at the bottom: follow again
    assert view.is_following()
    for n in range(81, 100):
        view.add_final(n, n, n + 1, f"line {n}")
    QApplication.processEvents()
    assert bar.value() == bar.maximum()


def test_screenshot_two_finals_and_a_partial(qtbot, view: TranscriptView, artifacts: Path) -> None:
    view.resize(520, 180)
    view.show()
    qtbot.waitExposed(view)
    view.add_final(0, 0.4, 3.1, "Good morning, this is a test of the live transcript.")
    view.add_final(1, 3.6, 7.9, "Finals carry their start time; escaping works: <b> & co.")
    view.set_partial(2, "and this part is still being spoken")
    path = artifacts / "transcript_view.png"
    assert view.grab().save(str(path))
    assert path.stat().st_size > 0
