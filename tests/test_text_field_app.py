"""The stand-in "other application" itself: it reports and (by default) retakes a lost
focus, so the insertion tests' "focus-lost not printed" really means nothing stole it."""

from __future__ import annotations

import time

from tests import xdisplay
from tests.text_field_app import TextField

xserver = xdisplay.xserver


def wait_focus(server: xdisplay.XServer, window: int, timeout: float = 5.0) -> int:
    deadline = time.monotonic() + timeout
    now = xdisplay.focused_window(server.display)
    while now != window and time.monotonic() < deadline:
        time.sleep(0.05)
        now = xdisplay.focused_window(server.display)
    return now


def test_a_lost_focus_is_reported(xserver, tmp_path) -> None:
    with TextField(xserver, tmp_path / "a.txt", "Field A", keep_focus=False) as a:
        assert a.text() == ""
        with TextField(xserver, tmp_path / "b.txt", "Field B", keep_focus=False) as b:
            assert wait_focus(xserver, b.window) == b.window  # B took it on start
            a.wait_output("focus-lost")
            xdisplay.focus(a.window, xserver.display)
            assert wait_focus(xserver, a.window) == a.window
            b.wait_output("focus-lost")


def test_a_lost_focus_is_taken_back(xserver, tmp_path) -> None:
    with (TextField(xserver, tmp_path / "a.txt", "Keeper") as keeper,
          TextField(xserver, tmp_path / "b.txt", "Thief", keep_focus=False,
                    focus=False) as thief):
        keeper.wait_output("focus-lost")
        assert wait_focus(xserver, keeper.window) == keeper.window
        thief.wait_output("focus-lost")
