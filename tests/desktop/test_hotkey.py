"""The global hotkey: combination parsing, why it is unavailable, and real key presses
sent with XTEST (xdotool) to an Xvfb server, seen by pynput's listener."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest
from PySide6.QtWidgets import QApplication

from desktop.hotkey import (
    DEFAULT_COMBINATION,
    GlobalHotkey,
    HotkeyUnavailable,
    display_name,
    parse_combination,
)
from tests.xdisplay import xserver  # noqa: F401  (fixture)


@pytest.mark.parametrize("text, canonical", [
    ("<ctrl>+<alt>+d", "<ctrl>+<alt>+d"),
    ("Ctrl+Alt+D", "<ctrl>+<alt>+d"),
    ("control + option + F9", "<ctrl>+<alt>+<f9>"),
    ("super+space", "<cmd>+<space>"),
    ("<ctrl>+<65027>", "<ctrl>+<65027>"),
])
def test_combinations_are_canonical(text, canonical):
    assert parse_combination(text) == canonical


@pytest.mark.parametrize("text, why", [
    ("", "empty"), ("ctrl++d", "empty key"), ("ctrl+hyper+d", "unknown key 'hyper'"),
    ("ctrl+d+D", "twice"), ("Ctrl+Shift+Space", "in-window shortcut"),
])
def test_bad_combinations_say_why(text, why):
    with pytest.raises(ValueError, match=why):
        parse_combination(text)


def test_display_name():
    assert display_name(DEFAULT_COMBINATION) == "Ctrl+Alt+D"
    assert display_name("<ctrl>+<page_up>") == "Ctrl+Page Up"


def test_bad_mode_is_refused(qapp):
    with pytest.raises(ValueError, match="toggle, hold"):
        GlobalHotkey(mode="press")


def test_no_display_is_unavailable_with_the_fallback(qapp, monkeypatch):
    for key in ("DISPLAY", "WAYLAND_DISPLAY", "XDG_SESSION_TYPE"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(HotkeyUnavailable, match=r"no X display.*earshot --toggle"):
        GlobalHotkey().start()


def test_wayland_is_unavailable_with_the_fallback(qapp, monkeypatch):
    monkeypatch.setenv("XDG_SESSION_TYPE", "wayland")
    monkeypatch.setenv("DISPLAY", ":0")  # XWayland does not make global keys visible
    with pytest.raises(HotkeyUnavailable, match=r"Wayland.*portal.*earshot --toggle"):
        GlobalHotkey().start()


@pytest.fixture
def on_x(xserver, monkeypatch):  # noqa: F811
    monkeypatch.setenv("DISPLAY", xserver.display)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.delenv("XDG_SESSION_TYPE", raising=False)

    def xdotool(*args: str) -> None:
        subprocess.run(["xdotool", *args], env=xserver.env(), check=True, timeout=10)

    return xdotool


def test_toggle_mode_fires_once_per_press_on_the_gui_thread(qtbot, on_x):
    hotkey = GlobalHotkey("<ctrl>+<alt>+d", mode="toggle")
    threads = []
    hotkey.activated.connect(lambda: threads.append(threading.current_thread()))
    hotkey.start()
    try:
        assert hotkey.running
        on_x("key", "ctrl+alt+e", "alt+d", "d")  # not the combination
        with qtbot.waitSignal(hotkey.activated, timeout=5000):
            on_x("key", "ctrl+alt+d")
        qtbot.wait(300)
        assert len(threads) == 1
        # held past the auto-repeat: X repeats release+press pairs; still one activation
        on_x("keydown", "ctrl+alt+d", "keyup", "d", "keydown", "d", "keyup", "d",
             "keydown", "d")
        qtbot.waitUntil(lambda: len(threads) == 2, timeout=5000)
        on_x("keyup", "d", "keyup", "alt", "keyup", "ctrl")
        qtbot.wait(300)
        assert len(threads) == 2
        main = QApplication.instance().thread()
        assert all(t is threading.main_thread() for t in threads) and main is not None
    finally:
        hotkey.stop()
    assert not hotkey.running


def test_hold_mode_reports_down_and_up(qtbot, on_x):
    hotkey = GlobalHotkey("Ctrl+Shift+F9", mode="hold")
    seen: list[bool] = []
    hotkey.held.connect(seen.append)
    hotkey.start()
    try:
        with qtbot.waitSignal(hotkey.held, timeout=5000, check_params_cb=bool):
            on_x("keydown", "ctrl+shift+F9")
        qtbot.wait(200)
        assert seen == [True]
        with qtbot.waitSignal(hotkey.held, timeout=5000, check_params_cb=lambda d: not d):
            on_x("keyup", "shift")  # letting go of any key of the combination ends it
        on_x("keyup", "F9", "keyup", "ctrl")
        qtbot.wait(200)
        assert seen == [True, False]
    finally:
        hotkey.stop()


@pytest.mark.parametrize("args, why", [
    (["--hotkey", "Ctrl+Shift+Space"], "--hotkey: Ctrl+Shift+Space is Earshot's in-window"),
    (["--hotkey", "ctrl+hyper+d"], "--hotkey: hotkey 'ctrl+hyper+d': unknown key 'hyper'"),
    (["--start-on-hotkey"], "--start-on-hotkey needs --audio-file"),
    (["--hotkey-mode", "tap"], "argument --hotkey-mode: invalid choice: 'tap'"),
])
def test_the_command_line_refuses_bad_hotkey_options(args, why):
    run = subprocess.run([sys.executable, "-m", "desktop.cli", *args, "--quit-when-done"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and why in run.stderr
