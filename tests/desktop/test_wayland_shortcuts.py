"""The Wayland hotkey through the desktop portal's GlobalShortcuts, on a private D-Bus
session bus (dbus-daemon). No compositor exists here, so a real portal cannot: the
unavailable paths run against a bus without one, and the protocol (CreateSession,
BindShortcuts, Request/Response, Activated/Deactivated) against tests/desktop/fake_portal.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from desktop.hotkey import HotkeyUnavailable
from desktop.wayland_shortcuts import PortalShortcuts, portal_trigger, session_bus_address
from tests.conftest import DEV

FALLBACK = "bind the command `earshot --toggle` to a shortcut in your desktop's keyboard"


@pytest.fixture
def session_bus(monkeypatch):
    if not shutil.which("dbus-daemon"):
        pytest.skip("dbus-daemon not installed")
    bus = subprocess.Popen(["dbus-daemon", "--session", "--nofork", "--print-address"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    address = bus.stdout.readline().strip()
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", address)
    yield address
    bus.terminate()
    bus.wait(5)


@pytest.fixture
def portal(session_bus):
    procs = []

    def start(*flags: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "tests.desktop.fake_portal",
                                 session_bus, *flags], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "ready"
        return proc

    yield start
    for proc in procs:
        proc.stdin.close()
        proc.terminate()
        proc.wait(5)


def test_triggers_in_the_portal_form():
    assert portal_trigger("<ctrl>+<alt>+d") == "CTRL+ALT+d"
    assert portal_trigger("Super+Shift+F9") == "LOGO+SHIFT+F9"
    assert portal_trigger("ctrl+space") == "CTRL+space"


def test_no_session_bus(qapp, monkeypatch, tmp_path):
    monkeypatch.delenv("DBUS_SESSION_BUS_ADDRESS", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))  # no `bus` socket in it
    assert session_bus_address() is None
    with pytest.raises(HotkeyUnavailable, match="no D-Bus session bus") as err:
        PortalShortcuts("<ctrl>+<alt>+d").start()
    assert FALLBACK in str(err.value)


def test_a_bus_without_the_portal(qapp, session_bus):
    with pytest.raises(HotkeyUnavailable, match="xdg-desktop-portal is not running") as err:
        PortalShortcuts("<ctrl>+<alt>+d").start()
    assert FALLBACK in str(err.value)


def test_toggle_through_the_portal(qtbot, portal):
    fake = portal()
    shortcuts = PortalShortcuts("<ctrl>+<alt>+d", mode="toggle")
    fired = []
    shortcuts.activated.connect(lambda: fired.append("activated"))
    with qtbot.waitSignal(shortcuts.bound, timeout=10_000) as bound:
        shortcuts.start()
    try:
        assert bound.args == ["Ctrl+Alt+D"]  # what the desktop shows
        assert fake.stdout.readline().strip() == "bound dictate CTRL+ALT+d"
        qtbot.waitUntil(lambda: fired == ["activated"], timeout=5_000)
        qtbot.wait(500)  # Deactivated changes nothing in toggle mode
        assert fired == ["activated"]
    finally:
        shortcuts.stop()
    assert not shortcuts.running


def test_hold_through_the_portal(qtbot, portal):
    portal()
    shortcuts = PortalShortcuts("<ctrl>+<alt>+d", mode="hold")
    held = []
    shortcuts.held.connect(held.append)
    shortcuts.start()
    try:
        qtbot.waitUntil(lambda: held == [True, False], timeout=10_000)
    finally:
        shortcuts.stop()


def test_declined_by_the_user(qtbot, portal):
    portal("--decline")
    shortcuts = PortalShortcuts("<ctrl>+<alt>+d")
    with qtbot.waitSignal(shortcuts.unavailable, timeout=10_000) as why:
        shortcuts.start()
    shortcuts.stop()
    assert "BindShortcuts was declined" in why.args[0] and FALLBACK in why.args[0]


def test_the_app_on_wayland_starts_dictating_from_the_portal(portal, session_bus, tmp_path):
    """`earshot` in a Wayland session binds its hotkey through the portal; the portal's
    Activated (sent right after the bind, while the engine still loads) starts the file."""
    fake = portal()
    env = dict(os.environ, XDG_SESSION_TYPE="wayland", QT_QPA_PLATFORM="offscreen",
               DBUS_SESSION_BUS_ADDRESS=session_bus, XDG_DATA_HOME=str(tmp_path / "data"),
               XDG_CONFIG_HOME=str(tmp_path / "config"),
               EARSHOT_CONFIG_DIR=str(tmp_path / "earshot-config"))
    env.pop("DISPLAY", None)
    transcript = tmp_path / "t.txt"
    run = subprocess.run([sys.executable, "-m", "desktop.cli", "--audio-file",
                          str(DEV / "sherpa-test-wavs/8k.wav"), "--fast", "--start-on-hotkey",
                          "--quit-when-done", "--transcript-out", str(transcript)],
                         env=env, capture_output=True, text=True, timeout=90)
    assert run.returncode == 0, run.stderr
    assert "earshot: ready: Ctrl+Alt+D or `earshot --toggle`" in run.stdout
    assert fake.stdout.readline().strip() == "bound dictate CTRL+ALT+d"
    assert "apprehension" in transcript.read_text().lower()
