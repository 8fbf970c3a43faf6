"""A real X server for tests: Xvfb on a free display, plus xdotool helpers.

- `start_xvfb()` starts `Xvfb -displayfd` (Xvfb itself picks a free display number and
  reports it once it accepts connections), checks that the display answers, and returns an
  `XServer`. `XServer.stop()` (or leaving its `with` block) ends it.
- `XServer.env(**extra)`: a copy of `os.environ` with `DISPLAY` set to this server and
  `QT_QPA_PLATFORM=xcb` (the test process itself runs Qt offscreen: programs that must
  talk to this X server are started as subprocesses with this environment).
- `xserver`: a pytest fixture (module scope) giving an `XServer`. When `Xvfb` is not
  installed it skips the test, except under CI (`CI=true`), where it fails: the test command
  (`python3 dev.py test`) installs Xvfb and xdotool, so their absence there is a bug.
  Use it in a test module (or conftest) as `xserver = xdisplay.xserver` after
  `from tests import xdisplay` (importing the name itself makes ruff report F811 on the
  tests that take it as an argument).
- `focus(window, display=...)`: give the keyboard focus to a window (by exact title or by
  id) with xdotool. Bare Xvfb has no window manager, so this uses `windowfocus`
  (XSetInputFocus), not `windowactivate` (which needs a WM speaking EWMH).
- `focused_window(display)`: the id of the window that has the input focus.

No global state: every server is its own process, with no TCP listener (`-nolisten tcp`).
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

SCREEN = "1280x800x24"
START_TIMEOUT_S = 15.0


class XServerError(RuntimeError):
    """Xvfb did not start or does not answer; the message holds its output."""


class XServer:
    """One running Xvfb. `display` is ":N"."""

    def __init__(self, proc: subprocess.Popen, number: int) -> None:
        self.proc = proc
        self.number = number
        self.display = f":{number}"

    def env(self, **extra: str) -> dict[str, str]:
        """os.environ with DISPLAY set to this server, Qt on xcb, and `extra` on top."""
        env = dict(os.environ)
        env.pop("WAYLAND_DISPLAY", None)
        env["DISPLAY"] = self.display
        env["QT_QPA_PLATFORM"] = "xcb"
        env["XDG_SESSION_TYPE"] = "x11"
        env.update(extra)
        return env

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        """End the server (SIGTERM, then SIGKILL after 5 s). Idempotent."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def __enter__(self) -> XServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"XServer(display={self.display!r}, pid={self.proc.pid})"


def xvfb_missing() -> str | None:
    """None when Xvfb and xdotool are installed, else what is missing and how to install it."""
    missing = [p for p in ("Xvfb", "xdotool") if not shutil.which(p)]
    if not missing:
        return None
    return (f"{' and '.join(missing)} not installed (Debian/Ubuntu: apt-get install xvfb "
            f"xdotool; `python3 dev.py test` installs them)")


def _answers(number: int) -> bool:
    """Whether the server's local socket accepts a connection."""
    path = Path(f"/tmp/.X11-unix/X{number}")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def start_xvfb(screen: str = SCREEN, timeout: float = START_TIMEOUT_S) -> XServer:
    """Start Xvfb on a free display and wait until it answers; XServerError if it cannot."""
    if not shutil.which("Xvfb"):
        raise XServerError(xvfb_missing() or "Xvfb not installed")
    rfd, wfd = os.pipe()
    try:
        proc = subprocess.Popen(
            ["Xvfb", "-displayfd", str(wfd), "-screen", "0", screen, "-nolisten", "tcp",
             "-noreset", "+extension", "XTEST"],
            pass_fds=(wfd,), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True)
    finally:
        os.close(wfd)
    number: int | None = None
    got = b""
    deadline = time.monotonic() + timeout
    try:
        while number is None:
            left = deadline - time.monotonic()
            if left <= 0 or proc.poll() is not None:
                break
            ready, _, _ = select.select([rfd], [], [], min(left, 0.2))
            if ready:
                chunk = os.read(rfd, 64)
                if not chunk:  # Xvfb closed the pipe without a number: it failed
                    proc.wait(2)
                    break
                got += chunk
                if got.endswith(b"\n"):
                    number = int(got.strip())
        while number is not None and not _answers(number):
            if time.monotonic() > deadline or proc.poll() is not None:
                number = None
                break
            time.sleep(0.05)
    finally:
        os.close(rfd)
    if number is None:
        if proc.poll() is None:
            proc.kill()
        try:
            _, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            err = b""
        raise XServerError(f"Xvfb did not start within {timeout:.0f} s (exit code "
                           f"{proc.returncode}): {err.decode(errors='replace')[-2000:]}")
    if proc.stderr is not None:  # nothing reads it from here on: never let it fill up
        proc.stderr.close()
    return XServer(proc, number)


def _xdotool(args: list[str], display: str | None, timeout: float) -> str:
    env = dict(os.environ)
    if display is not None:
        env["DISPLAY"] = display
    try:
        out = subprocess.run(["xdotool", *args], env=env, capture_output=True, text=True,
                             timeout=timeout)
    except subprocess.TimeoutExpired:
        raise XServerError(f"xdotool {' '.join(args)} gave no answer within {timeout:.0f} s"
                           ) from None
    if out.returncode != 0:
        raise XServerError(f"xdotool {' '.join(args)} failed ({out.returncode}): "
                           f"{out.stderr.strip()}")
    return out.stdout


def find_window(name: str, display: str | None = None, timeout: float = 10.0) -> int:
    """The id of the (first) window whose title is exactly `name`, waiting until it exists."""
    import re

    out = _xdotool(["search", "--sync", "--onlyvisible", "--name", f"^{re.escape(name)}$"],
                   display, timeout)
    return int(out.split()[0])


def focused_window(display: str | None = None, timeout: float = 5.0) -> int:
    """The id of the window that has the keyboard focus."""
    return int(_xdotool(["getwindowfocus", "-f"], display, timeout).strip())


def focus(window: str | int, display: str | None = None, timeout: float = 10.0) -> int:
    """Give the keyboard focus to `window` (its exact title, or its id) and return its id.

    Waits for the window to be mapped and for the focus to be there (`--sync`)."""
    wid = window if isinstance(window, int) else find_window(window, display, timeout)
    _xdotool(["windowfocus", "--sync", str(wid)], display, timeout)
    return wid


@pytest.fixture(scope="module")
def xserver() -> Iterator[XServer]:
    """A fresh Xvfb for the test module; skipped (not under CI) when Xvfb is missing."""
    why = xvfb_missing()
    if why:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI: {why}", pytrace=False)
        pytest.skip(why)
    server = start_xvfb()
    try:
        yield server
    finally:
        server.stop()
