"""The TextInserter facade without an X server: modes, errors, state on failure. Typing
goes through a stand-in `wtype` (Wayland; no compositor exists here); the real X11 typing
and pasting are in test_inserter_x11.py."""

from __future__ import annotations

import pytest

from desktop.insert import MODES, InsertionError, TextInserter, available_modes
from tests import xdisplay

xserver = xdisplay.xserver


def test_modes_and_a_bad_one() -> None:
    assert MODES == ("type", "paste", "off")
    with pytest.raises(ValueError, match=r"unknown insertion mode 'typing'.*type, paste, off"):
        TextInserter("typing")


def test_off_inserts_nothing(monkeypatch) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)  # "off" needs no display at all
    ins = TextInserter("off")
    ins.begin()
    ins.insert_final("Hello there.")
    assert ins.inserted == []
    assert not ins.busy
    done = []
    ins.when_idle(lambda: done.append(True))
    assert done == [True]
    assert available_modes()["off"] is None


def test_type_mode_sends_joined_text_and_scratches(fake_wtype) -> None:
    ins = TextInserter("type")
    ins.begin()
    for text in ("Hello there.", "how are you", "New line.", "Scratch that.", "fine"):
        ins.insert_final(text)
    assert ins.inserted == ["Hello there.", " How are you", " fine"]
    assert fake_wtype.calls() == [["--", "Hello there."], ["--", " How are you"],
                                  ["--", "\n"], ["-k", "BackSpace"], ["--", " fine"]]
    ins.begin("")  # a new dictation into an empty field
    ins.insert_final("again.")
    assert ins.inserted == ["Again."]


def test_a_failed_insertion_raises_and_changes_no_state(fake_wtype) -> None:
    ins = TextInserter("type", spoken_commands=False)
    ins.begin()
    ins.insert_final("One.")
    fake_wtype.fail.write_text("Compositor does not support the virtual keyboard protocol")
    with pytest.raises(InsertionError, match="virtual keyboard protocol"):
        ins.insert_final("two")
    assert ins.inserted == ["One."]
    fake_wtype.fail.unlink()
    ins.insert_final("two")
    assert ins.inserted == ["One.", " Two"]


def test_begin_says_why_a_mode_cannot_work(wayland) -> None:
    why = available_modes()
    assert "wtype" in why["type"] and "wtype" in why["paste"]
    for mode in ("type", "paste"):
        with pytest.raises(InsertionError, match="wtype"):
            TextInserter(mode).begin()


def test_no_x_display(monkeypatch) -> None:
    for key in ("DISPLAY", "WAYLAND_DISPLAY", "XDG_SESSION_TYPE"):
        monkeypatch.delenv(key, raising=False)
    assert "DISPLAY is not set" in available_modes()["type"]
    with pytest.raises(InsertionError, match="X display"):
        TextInserter("type").begin()


def test_paste_needs_a_real_display(qapp, xserver, monkeypatch) -> None:
    """Keys could be sent (an X display is there), but this process's Qt is offscreen."""
    monkeypatch.setenv("DISPLAY", xserver.display)
    why = available_modes()
    assert why["type"] is None
    assert why["paste"] == "Paste mode needs a real display (Qt platform 'offscreen')"
