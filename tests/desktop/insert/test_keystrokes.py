"""Keystroke backends: session detection, wtype's command lines, X keysyms. (pynput under a
real X server is exercised by test_inserter_x11.py.)"""

from __future__ import annotations

import pytest

from desktop.insert.errors import InsertionError
from desktop.insert.keystrokes import (
    WTYPE_MISSING,
    WtypeKeys,
    char_keysym,
    is_wayland,
    key_sender,
    keys_unavailable,
)


@pytest.mark.parametrize(("env", "wayland"), [
    ({"XDG_SESSION_TYPE": "wayland", "DISPLAY": ":0"}, True),   # XWayland's DISPLAY too
    ({"WAYLAND_DISPLAY": "wayland-0"}, True),
    ({"WAYLAND_DISPLAY": "wayland-0", "DISPLAY": ":0"}, False),  # no session type: X11 wins
    ({"XDG_SESSION_TYPE": "x11", "DISPLAY": ":0"}, False),
    ({}, False),
])
def test_is_wayland(env: dict[str, str], wayland: bool) -> None:
    assert is_wayland(env) is wayland


def test_wayland_without_wtype_says_what_to_install(wayland) -> None:
    with pytest.raises(InsertionError, match=r"`wtype`.*apt install wtype.*'paste'"):
        key_sender("type")
    assert keys_unavailable("type") == WTYPE_MISSING
    # paste needs keys too: without XWayland's DISPLAY there is nothing to send Ctrl+V with
    assert keys_unavailable("paste") == WTYPE_MISSING


def test_wayland_paste_without_wtype_falls_back_to_xwayland(wayland, monkeypatch) -> None:
    monkeypatch.setenv("DISPLAY", ":0")
    assert keys_unavailable("paste") is None
    assert keys_unavailable("type") == WTYPE_MISSING


def test_wtype_command_lines(fake_wtype) -> None:
    keys = key_sender("type")
    assert isinstance(keys, WtypeKeys)
    keys.type_text("Dear John,\n-not an option")
    keys.backspace(3)
    keys.backspace(0)
    keys.paste_shortcut()
    assert fake_wtype.calls() == [
        ["--", "Dear John,\n-not an option"],
        ["-k", "BackSpace", "-k", "BackSpace", "-k", "BackSpace"],
        ["-M", "ctrl", "-k", "v", "-m", "ctrl"],
    ]


def test_wtype_failure_is_explained(fake_wtype) -> None:
    fake_wtype.fail.write_text("Compositor does not support the virtual keyboard protocol")
    with pytest.raises(InsertionError, match=r"virtual keyboard protocol.*'paste' mode"):
        WtypeKeys().type_text("hello")


def test_no_x_display(monkeypatch) -> None:
    for key in ("DISPLAY", "WAYLAND_DISPLAY", "XDG_SESSION_TYPE"):
        monkeypatch.delenv(key, raising=False)
    assert "DISPLAY" in keys_unavailable("type")
    with pytest.raises(InsertionError, match="X display"):
        key_sender("type")


@pytest.mark.parametrize(("ch", "keysym"), [
    ("a", 0x61), ("~", 0x7E), ("é", 0xE9), ("½", 0xBD),
    ("—", 0x1002014), ("€", 0x10020AC), ("🙂", 0x101F642),
])
def test_char_keysym(ch: str, keysym: int) -> None:
    assert char_keysym(ch) == keysym
