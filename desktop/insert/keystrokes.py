"""Synthetic keystrokes into whatever window has the keyboard focus.

Backends (picked by `key_sender()` from the session this process runs in;
`keys_unavailable()` says why none would work, without sending anything):
- X11, Windows, macOS: **pynput** (`pynput.keyboard.Controller`): XTEST on X11 (a
  character with no key in the current layout, such as "é" on a US layout, is typed
  through a spare keycode mapped to it: `X11Scratch`), SendInput with KEYEVENTF_UNICODE
  on Windows, CGEvent on macOS (the app needs the Accessibility permission there, else
  the events are silently dropped: `macos_trusted()` tells).
- Wayland (`XDG_SESSION_TYPE=wayland`, or `WAYLAND_DISPLAY` set and no `DISPLAY`): the
  `wtype` program (virtual-keyboard protocol: wlroots compositors such as Sway and
  Hyprland; GNOME's does not offer it). Without `wtype`: `InsertionError` saying what to
  install, or to use paste mode, whose Ctrl+V then goes through pynput to XWayland (it
  reaches X11 apps only).

"\\n" is typed as Enter (a plain Return, not Shift+Return). Everything else is typed as the
characters themselves. Every method blocks until the events are sent (X11: flushed to the
server), which takes a few ms per character; the target processes them asynchronously.
Any thread, one at a time (the inserter uses the GUI thread). Failures raise
`InsertionError` with a message for the user.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from typing import Protocol

from desktop.insert.errors import InsertionError

WTYPE_TIMEOUT_S = 10.0
WTYPE_MISSING = (
    "Typing into other applications on Wayland needs the `wtype` program (Debian/Ubuntu: "
    "`sudo apt install wtype`; it works on Sway, Hyprland and other wlroots compositors, "
    "not on GNOME). Or choose the 'paste' insertion mode, or log in to an X11 session.")


class KeySender(Protocol):
    """What the inserters need from a keystroke backend."""

    name: str

    def type_text(self, text: str) -> None:
        """Type `text` ("\\n" as Enter)."""

    def backspace(self, count: int) -> None:
        """Press Backspace `count` times."""

    def paste_shortcut(self) -> None:
        """Press the platform's paste shortcut (Ctrl+V; Cmd+V on macOS)."""


def is_wayland(env: dict[str, str] | None = None) -> bool:
    """Whether this process's session is Wayland (then X11 keystrokes reach only XWayland
    windows): XDG_SESSION_TYPE=wayland, or WAYLAND_DISPLAY set without DISPLAY."""
    env = os.environ if env is None else env
    if sys.platform in ("win32", "darwin"):
        return False
    if env.get("XDG_SESSION_TYPE", "").lower() == "wayland":
        return True
    return bool(env.get("WAYLAND_DISPLAY")) and not env.get("DISPLAY")


def macos_trusted() -> bool | None:
    """macOS: whether this process may post keyboard events (Accessibility permission);
    None when it cannot be told (not macOS, or pyobjc's HIServices missing)."""
    if sys.platform != "darwin":
        return None
    try:
        import HIServices  # pyobjc, a dependency of pynput on macOS
    except ImportError:
        return None
    return bool(HIServices.AXIsProcessTrusted())


MACOS_UNTRUSTED = (
    "macOS blocks the keystrokes: allow Earshot in System Settings > Privacy & Security > "
    "Accessibility, then restart it.")


def char_keysym(ch: str) -> int:
    """The X keysym of one character: Latin-1 keysyms are the code point, the rest are
    Unicode keysyms (0x01000000 + code point)."""
    cp = ord(ch)
    if 0x20 <= cp <= 0x7E or 0xA0 <= cp <= 0xFF:
        return cp
    return 0x01000000 + cp


class X11Scratch:
    """X11: types characters the keyboard layout lacks through spare keycodes.

    pynput does this too, but adds a second character to an already borrowed keycode at
    the Shift level, which XKB then ignores ("”" after "“" came out as "“" under Xvfb and
    Qt). Here each such character gets a keycode of its own with the keysym on every
    level, like xdotool does; keycodes with no symbols are used round-robin, and one is
    reused only after REUSE_AFTER_S (a client reads the new mapping when it handles the
    notify, possibly after a later change). Mappings are left in place (pynput does too).
    """

    REUSE_AFTER_S = 0.3

    def __init__(self) -> None:
        import Xlib.display
        import Xlib.ext.xtest  # registers the XTEST extension methods

        self._d = Xlib.display.Display()
        lo, hi = self._d.display.info.min_keycode, self._d.display.info.max_keycode
        rows = self._d.get_keyboard_mapping(lo, hi - lo + 1)
        self._width = len(rows[0]) if rows else 4
        self._free = [lo + i for i, row in enumerate(rows) if not any(row)]
        if not self._free:
            raise InsertionError("The X keyboard has no spare keycode to type characters "
                                 "outside its layout; try the 'paste' insertion mode")
        self._mapped: dict[int, tuple[int, float]] = {}  # keysym -> (keycode, last use)

    def close(self) -> None:
        self._d.close()

    def _keycode(self, keysym: int) -> int:
        import time

        now = time.monotonic()
        if keysym in self._mapped:
            keycode, _ = self._mapped[keysym]
        elif len(self._mapped) < len(self._free):
            keycode = self._free[len(self._mapped)]
        else:
            old = min(self._mapped, key=lambda k: self._mapped[k][1])
            keycode, used = self._mapped.pop(old)
            if now - used < self.REUSE_AFTER_S:
                time.sleep(self.REUSE_AFTER_S - (now - used))
        if keysym not in self._mapped:
            self._d.change_keyboard_mapping(keycode, [[keysym] * self._width])
            self._d.sync()
        self._mapped[keysym] = (keycode, time.monotonic())
        return keycode

    def type_char(self, ch: str) -> None:
        from Xlib import X
        from Xlib.ext import xtest

        keycode = self._keycode(char_keysym(ch))
        xtest.fake_input(self._d, X.KeyPress, keycode)
        xtest.fake_input(self._d, X.KeyRelease, keycode)
        self._d.sync()


class PynputKeys:
    """pynput's keyboard Controller (X11 via XTEST, Windows, macOS)."""

    name = "pynput"

    def __init__(self) -> None:
        if sys.platform == "darwin" and macos_trusted() is False:
            raise InsertionError(MACOS_UNTRUSTED)
        try:
            from pynput import keyboard
        except ImportError as exc:  # no X display, or pynput not installed
            where = os.environ.get("DISPLAY")
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InsertionError(
                "Cannot send keystrokes: " + (
                    f"the X display {where!r} cannot be reached ({first})" if where is not None
                    else f"no X display or keyboard backend ({first})")
            ) from exc
        self._keyboard = keyboard
        try:
            self._ctl = keyboard.Controller()
        except Exception as exc:  # e.g. X11: the display went away since the import
            raise InsertionError(f"Cannot send keystrokes (X display "
                                 f"{os.environ.get('DISPLAY')!r}): {exc}") from exc
        # X11 (pynput's xorg backend): characters outside the layout go through X11Scratch
        self._x11 = self._ctl if hasattr(self._ctl, "keyboard_mapping") else None
        self._x11_scratch: X11Scratch | None = None

    def _tap(self, key: object) -> None:
        self._ctl.press(key)
        self._ctl.release(key)

    def _typeable(self, ch: str) -> bool:
        """Whether pynput types `ch` with a key of the layout (X11), i.e. without remapping."""
        if self._x11 is None:
            return True
        return not ch.isprintable() or char_keysym(ch) in self._ctl.keyboard_mapping

    def _type_line(self, line: str) -> None:
        run = ""
        for ch in line:
            if self._typeable(ch):
                run += ch
                continue
            if run:
                self._ctl.type(run)
                run = ""
            if self._x11_scratch is None:
                self._x11_scratch = X11Scratch()
            self._x11_scratch.type_char(ch)
        if run:
            self._ctl.type(run)

    def type_text(self, text: str) -> None:
        try:
            for i, line in enumerate(text.split("\n")):
                if i:
                    self._tap(self._keyboard.Key.enter)
                if line:
                    self._type_line(line)
        except InsertionError:
            raise
        except self._keyboard.Controller.InvalidCharacterException as exc:
            char = exc.args[-1] if exc.args else "?"
            raise InsertionError(
                f"The character {char!r} cannot be typed with this keyboard layout; "
                f"try the 'paste' insertion mode") from exc
        except Exception as exc:
            raise InsertionError(f"Typing failed: {exc}") from exc

    def backspace(self, count: int) -> None:
        try:
            for _ in range(count):
                self._tap(self._keyboard.Key.backspace)
        except Exception as exc:
            raise InsertionError(f"Sending Backspace failed: {exc}") from exc

    def paste_shortcut(self) -> None:
        key = self._keyboard.Key
        mod = key.cmd if sys.platform == "darwin" else key.ctrl
        try:
            with self._ctl.pressed(mod):
                self._tap("v")
        except Exception as exc:
            raise InsertionError(f"Sending the paste shortcut failed: {exc}") from exc


class WtypeKeys:
    """The `wtype` program (Wayland virtual-keyboard protocol)."""

    name = "wtype"

    def __init__(self, program: str | None = None) -> None:
        found = program or shutil.which("wtype")
        if not found:
            raise InsertionError(WTYPE_MISSING)
        self.program = found

    def _run(self, args: list[str]) -> None:
        try:
            out = subprocess.run([self.program, *args], capture_output=True, text=True,
                                 timeout=WTYPE_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise InsertionError(f"wtype failed: {exc}") from exc
        if out.returncode != 0:
            why = out.stderr.strip() or f"exit code {out.returncode}"
            raise InsertionError(
                f"wtype could not type ({why}). This compositor may not offer the "
                f"virtual-keyboard protocol (GNOME does not); choose the 'paste' mode or an "
                f"X11 session.")

    def type_text(self, text: str) -> None:
        if text:
            self._run(["--", text])  # wtype types "\n" as Return

    def backspace(self, count: int) -> None:
        if count > 0:
            self._run([arg for _ in range(count) for arg in ("-k", "BackSpace")])

    def paste_shortcut(self) -> None:
        self._run(["-M", "ctrl", "-k", "v", "-m", "ctrl"])


def key_sender(purpose: str = "type") -> KeySender:
    """The keystroke backend for this session; InsertionError (for the user) when none.

    purpose "paste" (only Backspace and the paste shortcut are sent): on Wayland without
    wtype, pynput through XWayland when DISPLAY is set (it reaches X11 apps only)."""
    xwayland_paste = purpose == "paste" and bool(os.environ.get("DISPLAY"))
    if is_wayland() and (shutil.which("wtype") or not xwayland_paste):
        return WtypeKeys()
    return PynputKeys()


def keys_unavailable(purpose: str = "type") -> str | None:
    """None when key_sender(purpose) can work here, else why not (connects to X at most)."""
    if is_wayland():
        if shutil.which("wtype") or (purpose == "paste" and os.environ.get("DISPLAY")):
            return None
        return WTYPE_MISSING
    if sys.platform == "darwin":
        return MACOS_UNTRUSTED if macos_trusted() is False else None
    if sys.platform.startswith("linux"):
        display = os.environ.get("DISPLAY")
        if not display:
            return "No X display (DISPLAY is not set): keystrokes cannot be sent."
        try:
            import Xlib.display

            Xlib.display.Display().close()
        except Exception as exc:
            return f"The X display {display!r} cannot be reached: {exc}"
    try:
        import pynput.keyboard  # noqa: F401  (the backend for this platform)
    except ImportError as exc:
        return f"Cannot send keystrokes: {str(exc).splitlines()[0]}"
    return None
