"""The system-wide dictation hotkey (X11, Windows, macOS) through pynput.

    hotkey = GlobalHotkey("<ctrl>+<alt>+d", mode="toggle")
    hotkey.activated.connect(window.toggle_recording)      # toggle mode
    hotkey.held.connect(lambda down: ...)                   # hold (push-to-talk) mode
    hotkey.start()   # raises HotkeyUnavailable(reason) when it cannot work here

Combination grammar (`parse_combination`): keys joined by "+" (so "+" itself
cannot be one), case-insensitive; a single
character is that key ("d", "1"), a name is a special key, with or without pynput's angle
brackets ("ctrl", "<ctrl>", "f9", "<space>"); aliases: control -> ctrl, option -> alt,
super/win/meta -> cmd, return -> enter, escape -> esc, del -> delete. The canonical form
is pynput's ("<ctrl>+<alt>+d"). The in-window shortcut Ctrl+Shift+Space is refused (it
would fire twice while the window has the focus).

Modes: "toggle" emits `activated` once each time the whole combination goes down;
"hold" emits `held(True)` when it goes down and `held(False)` when any of its keys is let
go. Key auto-repeat (X11 sends release+press pairs while a key is held) is absorbed: a
release followed by a press of the combination within `REPEAT_GAP_MS` is not an edge.

Threads: pynput calls back on its own listener thread; those callbacks only emit a
private signal, delivered queued to this QObject on the GUI thread, so the public
signals (`activated`, `held`) are always emitted on the GUI thread. `start`/`stop` are
GUI thread only.

Unavailable (`HotkeyUnavailable`, message for the user): a Wayland session (applications
cannot see global keys there: use desktop/wayland_shortcuts.py or bind `earshot --toggle`),
no X display, pynput missing, the X server without the RECORD extension, or macOS without
the Accessibility permission.
"""

from __future__ import annotations

import os
import sys
import threading

from PySide6.QtCore import QObject, Qt, QTimer, Signal, Slot

DEFAULT_COMBINATION = "<ctrl>+<alt>+d"
MODES = ("toggle", "hold")
REPEAT_GAP_MS = 60
IN_WINDOW_SHORTCUT = "<ctrl>+<shift>+<space>"  # window.RECORD_SHORTCUT in pynput's form
TOGGLE_FALLBACK = ("bind the command `earshot --toggle` to a shortcut in your desktop's "
                   "keyboard settings")

MODIFIERS = {"ctrl", "alt", "shift", "cmd", "alt_gr", "ctrl_l", "ctrl_r", "alt_l", "alt_r",
             "shift_l", "shift_r", "cmd_l", "cmd_r"}
SPECIAL_KEYS = MODIFIERS | {
    "backspace", "caps_lock", "delete", "down", "end", "enter", "esc", "home", "left",
    "page_down", "page_up", "right", "space", "tab", "up", "insert", "menu", "num_lock",
    "pause", "print_screen", "scroll_lock", "media_play_pause", "media_volume_mute",
    "media_volume_down", "media_volume_up", "media_previous", "media_next",
    *(f"f{i}" for i in range(1, 21))}
ALIASES = {"control": "ctrl", "option": "alt", "super": "cmd", "win": "cmd", "meta": "cmd",
           "return": "enter", "escape": "esc", "del": "delete", "pgup": "page_up",
           "pgdown": "page_down", "altgr": "alt_gr"}


class HotkeyUnavailable(RuntimeError):
    """The global hotkey cannot work here; str() is a user-facing reason and what to do."""


def parse_trigger(combination: str, mode: str) -> tuple[str, str]:
    """(combination in pynput's form, mode) checked; ValueError for either."""
    if mode not in MODES:
        raise ValueError(f"hotkey mode {mode!r}: use one of {', '.join(MODES)}")
    return parse_combination(combination), mode


def parse_combination(text: str) -> str:
    """The canonical pynput form of a combination ("Ctrl+Alt+D" -> "<ctrl>+<alt>+d").
    Raises ValueError naming the bad part (unknown key, empty part, a key twice, or the
    in-window Ctrl+Shift+Space)."""
    raw = (text or "").strip()
    if not raw:
        raise ValueError("the hotkey is empty; e.g. <ctrl>+<alt>+d")
    parts = [part.strip() for part in raw.split("+")]
    if any(not part for part in parts):
        raise ValueError(f"hotkey {raw!r}: an empty key between '+' signs")
    canonical: list[str] = []
    for part in parts:
        if len(part) == 1:
            canonical.append(part.lower())
            continue
        name = part[1:-1] if part.startswith("<") and part.endswith(">") else part
        name = ALIASES.get(name.lower(), name.lower())
        if name not in SPECIAL_KEYS and not name.isdigit():
            raise ValueError(f"hotkey {raw!r}: unknown key {part!r} (use a character, a "
                             "modifier ctrl/alt/shift/cmd, or a key name such as f9, space)")
        canonical.append(f"<{name}>")
    if len(set(canonical)) != len(canonical):
        raise ValueError(f"hotkey {raw!r}: a key appears twice")
    combo = "+".join(canonical)
    if set(canonical) == set(IN_WINDOW_SHORTCUT.split("+")):
        raise ValueError("Ctrl+Shift+Space is Earshot's in-window shortcut; choose another "
                         "global hotkey (the default is Ctrl+Alt+D)")
    return combo


def display_name(combination: str) -> str:
    """"<ctrl>+<alt>+d" -> "Ctrl+Alt+D" (for menus and messages)."""
    out = []
    for part in parse_combination(combination).split("+"):
        name = part.strip("<>")
        out.append(name.upper() if len(name) == 1 else name.replace("_", " ").title())
    return "+".join(out)


def is_wayland_session() -> bool:
    """A Wayland session: global keys are invisible to applications (also XWayland ones)."""
    if not sys.platform.startswith("linux"):
        return False
    if os.environ.get("XDG_SESSION_TYPE", "").lower() == "wayland":
        return True
    return bool(os.environ.get("WAYLAND_DISPLAY")) and not os.environ.get("DISPLAY")


def unavailable_reason() -> str | None:
    """Why a pynput hotkey cannot work here (None: it may; start() has the last word)."""
    if is_wayland_session():
        return ("global hotkeys are not visible to applications on Wayland; Earshot asks "
                "the desktop portal instead, or " + TOGGLE_FALLBACK)
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
        return "no X display (DISPLAY is unset), so no global hotkey; " + TOGGLE_FALLBACK
    return None


def _wake_xorg_listener(listener) -> None:
    """pynput's X11 listener disables its RECORD context on the connection that is blocked
    in it, so its thread ends only at the next X event; disabling it through the listener's
    other connection ends it now. A no-op on other backends (or if pynput changes)."""
    other = getattr(listener, "_display_stop", None)
    context = getattr(listener, "_context", None)
    if other is None or context is None:
        return
    try:
        other.record_disable_context(context)
        other.flush()
    except Exception:  # already closed: the thread is ending anyway
        pass


class GlobalHotkey(QObject):
    """One global key combination; see the module docstring for modes and threads."""

    activated = Signal()  # toggle mode: the combination went down
    held = Signal(bool)  # hold mode: True when it went down, False when it was let go
    _edge = Signal(bool)  # listener thread -> GUI thread (queued)

    def __init__(self, combination: str = DEFAULT_COMBINATION, mode: str = "toggle",
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.combination, self.mode = parse_trigger(combination, mode)
        self._listener = None
        self._keys: set = set()
        self._down: set = set()  # listener thread only
        self._is_down = False  # GUI thread: the debounced state of the combination
        self._release = QTimer(self)
        self._release.setSingleShot(True)
        self._release.setInterval(REPEAT_GAP_MS)
        self._release.timeout.connect(self._released)
        self._edge.connect(self._on_edge, Qt.ConnectionType.QueuedConnection)

    @property
    def running(self) -> bool:
        return self._listener is not None and self._listener.is_alive()

    def start(self, ready_timeout_s: float = 3.0) -> None:
        """Listen from now on (GUI thread). Raises HotkeyUnavailable with the reason."""
        if self.running:
            return
        reason = unavailable_reason()
        if reason:
            raise HotkeyUnavailable(reason)
        try:
            from pynput import keyboard
        except ImportError as exc:  # pynput missing, or it cannot reach the display
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise HotkeyUnavailable(f"the global hotkey needs pynput and a reachable display "
                                    f"({first}); " + TOGGLE_FALLBACK) from None
        self._keys = set(keyboard.HotKey.parse(self.combination))
        self._down = set()
        listener = keyboard.Listener(on_press=self._on_press, on_release=self._on_release)
        self._listener = listener
        listener.start()
        waiter = threading.Thread(target=listener.wait, daemon=True)
        waiter.start()
        waiter.join(ready_timeout_s)
        if waiter.is_alive() or not listener.is_alive():
            self.stop()
            raise HotkeyUnavailable("the keyboard listener did not start (the X server may "
                                    "lack the RECORD extension); " + TOGGLE_FALLBACK)
        if getattr(listener, "IS_TRUSTED", True) is False:  # macOS
            self.stop()
            raise HotkeyUnavailable("macOS does not let Earshot see the keyboard: allow it in "
                                    "System Settings > Privacy & Security > Accessibility "
                                    "(and Input Monitoring), then restart Earshot")

    def stop(self) -> None:
        """Stop listening (GUI thread; waits up to 2 s for the listener thread to end);
        a held combination counts as let go."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.stop()
            _wake_xorg_listener(listener)
            if listener.is_alive() and listener is not threading.current_thread():
                listener.join(2.0)  # its X connections are closed when it returns
        self._release.stop()
        if self._is_down:
            self._released()

    # ---- listener thread ---------------------------------------------------------------
    def _on_press(self, key) -> None:
        listener = self._listener
        if listener is None:
            return
        key = listener.canonical(key)
        if key not in self._keys or key in self._down:
            return
        self._down.add(key)
        if self._down == self._keys:
            self._edge.emit(True)

    def _on_release(self, key) -> None:
        listener = self._listener
        if listener is None:
            return
        key = listener.canonical(key)
        if key not in self._down:
            return
        whole = self._down == self._keys
        self._down.discard(key)
        if whole:
            self._edge.emit(False)

    # ---- GUI thread ------------------------------------------------------------------
    @Slot(bool)
    def _on_edge(self, down: bool) -> None:
        if not down:
            if self._is_down:
                self._release.start()  # an edge only if no press follows at once
            return
        if self._release.isActive():  # auto-repeat: released and pressed again at once
            self._release.stop()
            return
        if self._is_down:
            return
        self._is_down = True
        if self.mode == "toggle":
            self.activated.emit()
        else:
            self.held.emit(True)

    @Slot()
    def _released(self) -> None:
        self._is_down = False
        if self.mode == "hold":
            self.held.emit(False)
