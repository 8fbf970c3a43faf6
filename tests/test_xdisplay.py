"""The Xvfb harness itself: free displays, a server that answers, a clean stop."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests import xdisplay

# like the `xserver` fixture: skipped without Xvfb, except under CI (there it fails)
pytestmark = pytest.mark.skipif(xdisplay.xvfb_missing() is not None
                                and os.environ.get("CI", "").lower() != "true",
                                reason=str(xdisplay.xvfb_missing()))


def test_two_servers_on_free_displays_answer_and_stop() -> None:
    a = xdisplay.start_xvfb()
    try:
        b = xdisplay.start_xvfb()
        try:
            assert a.display != b.display
            for server in (a, b):
                env = server.env(EXTRA="1")
                assert env["DISPLAY"] == server.display
                assert env["QT_QPA_PLATFORM"] == "xcb" and env["EXTRA"] == "1"
                assert "WAYLAND_DISPLAY" not in env
                # a real X client gets an answer (xdotool asks the root window's geometry)
                out = subprocess.run(["xdotool", "getdisplaygeometry"], env=env,
                                     capture_output=True, text=True, timeout=10)
                assert out.stdout.split() == ["1280", "800"]
        finally:
            b.stop()
        assert not b.alive() and not xdisplay._answers(b.number)
        assert a.alive()
    finally:
        a.stop()
    a.stop()  # idempotent


def test_missing_window_is_a_clear_error() -> None:
    with xdisplay.start_xvfb() as server, pytest.raises(xdisplay.XServerError,
                                                        match="no answer within 1 s"):
        xdisplay.focus("no such window", server.display, timeout=1)


def test_missing_xvfb_says_how_to_install(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert "apt-get install xvfb xdotool" in xdisplay.xvfb_missing()
    with pytest.raises(xdisplay.XServerError, match="Xvfb and xdotool not installed"):
        xdisplay.start_xvfb()
