"""The global hotkey on Wayland: the XDG desktop portal's GlobalShortcuts interface.

    shortcuts = PortalShortcuts("<ctrl>+<alt>+d", mode="toggle")
    shortcuts.activated.connect(...); shortcuts.held.connect(...)
    shortcuts.unavailable.connect(...)   # a later failure (the user refused, portal error)
    shortcuts.start()    # raises HotkeyUnavailable now when there is no portal to ask

On Wayland applications cannot see global keys; the compositor binds them for us through
`org.freedesktop.portal.GlobalShortcuts` (GNOME 48+, KDE Plasma 5.27+, Hyprland...):
CreateSession, then BindShortcuts with one shortcut "dictate" (our combination as its
preferred trigger; the desktop may show a dialog and the user may pick another), then the
portal's Activated / Deactivated signals for our session are the key going down / up
(toggle mode: `activated` on Activated; hold mode: `held(True/False)`).

Where the session bus, the portal, or its GlobalShortcuts interface is missing, start()
raises HotkeyUnavailable with a message telling the user to bind `earshot --toggle` in
their desktop's keyboard settings (desktop/remote_control.py carries it to the app).

D-Bus goes through jeepney (pure Python; installed with keyring on Linux), not QtDBus:
PySide6 cannot marshal the portal's `a(sa{sv})` shortcut list (it would need a C++
metatype registered for the struct). All D-Bus traffic after start()'s checks runs on one
worker thread that owns the connection; what it hears reaches the GUI thread as a queued
signal, so the public signals are emitted on the GUI thread. start()/stop() GUI thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
from pathlib import Path

from PySide6.QtCore import QObject, Qt, Signal, Slot

from desktop.hotkey import TOGGLE_FALLBACK, HotkeyUnavailable, parse_combination, parse_trigger

log = logging.getLogger(__name__)
PORTAL_BUS = "org.freedesktop.portal.Desktop"
PORTAL_PATH = "/org/freedesktop/portal/desktop"
SHORTCUTS = "org.freedesktop.portal.GlobalShortcuts"
REQUEST = "org.freedesktop.portal.Request"
SHORTCUT_ID = "dictate"
REPLY_TIMEOUT_S = 5.0
USER_TIMEOUT_S = 120.0  # BindShortcuts may wait for the user in a dialog
NO_PORTAL = ("the desktop portal offers no global shortcuts here ({why}); " + TOGGLE_FALLBACK)


def session_bus_address() -> str | None:
    """$DBUS_SESSION_BUS_ADDRESS, else the systemd user bus socket when it exists."""
    address = os.environ.get("DBUS_SESSION_BUS_ADDRESS")
    if address:
        return address
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and (Path(runtime) / "bus").exists():
        return f"unix:path={Path(runtime) / 'bus'}"
    return None


def portal_trigger(combination: str) -> str:
    """pynput form -> the shortcut-trigger form of the XDG spec: "<ctrl>+<alt>+d" ->
    "CTRL+ALT+d" (modifiers upper case, keys as XKB key names)."""
    names = {"ctrl": "CTRL", "alt": "ALT", "shift": "SHIFT", "cmd": "LOGO"}
    out = []
    for part in parse_combination(combination).split("+"):
        name = part.strip("<>")
        if name in names:
            out.append(names[name])
        elif len(name) == 1:
            out.append(name)
        else:
            out.append({"space": "space", "enter": "Return", "esc": "Escape",
                        "page_up": "Prior", "page_down": "Next"}.get(name, name.upper()
                                                                      if name[0] == "f"
                                                                      else name))
    return "+".join(out)


class PortalShortcuts(QObject):
    """A global shortcut granted by the desktop portal; see the module docstring."""

    activated = Signal()
    held = Signal(bool)
    unavailable = Signal(str)  # after start(): the portal refused, or the user declined
    bound = Signal(str)  # the trigger the desktop shows for it (may differ from ours)
    _event = Signal(str, str)  # worker thread -> GUI thread: kind, detail

    def __init__(self, combination: str, mode: str = "toggle",
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.combination, self.mode = parse_trigger(combination, mode)
        self._conn = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._event.connect(self._on_event, Qt.ConnectionType.QueuedConnection)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Check that the portal offers GlobalShortcuts (raises HotkeyUnavailable), then
        create the session and bind the shortcut in the background."""
        try:
            from jeepney.io.blocking import open_dbus_connection
        except ImportError:
            raise HotkeyUnavailable(NO_PORTAL.format(why="jeepney is not installed")) from None
        address = session_bus_address()
        if address is None:
            raise HotkeyUnavailable(NO_PORTAL.format(why="no D-Bus session bus"))
        try:
            conn = open_dbus_connection(address)
        except Exception as exc:  # refused, a stale address, no permission
            raise HotkeyUnavailable(NO_PORTAL.format(
                why=f"cannot reach the D-Bus session bus: {exc}")) from None
        try:
            version = self._portal_version(conn)
        except HotkeyUnavailable:
            conn.close()
            raise
        log.info("desktop portal GlobalShortcuts version %s", version)
        self._conn = conn
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="portal-shortcuts",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop listening (the portal drops the binding with our connection)."""
        self._stopping.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(2.0)
        if self._conn is not None:
            with contextlib.suppress(Exception):  # already closed
                self._conn.close()
            self._conn = None

    @staticmethod
    def _portal_version(conn) -> int:
        from jeepney import DBusAddress, MessageType, Properties

        portal = DBusAddress(PORTAL_PATH, bus_name=PORTAL_BUS, interface=SHORTCUTS)
        try:
            reply = conn.send_and_get_reply(Properties(portal).get("version"),
                                            timeout=REPLY_TIMEOUT_S)
        except TimeoutError:
            raise HotkeyUnavailable(NO_PORTAL.format(why="the portal did not answer")) from None
        if reply.header.message_type == MessageType.error:
            name = reply.header.fields.get(4, "")  # HeaderFields.error_name
            why = ("xdg-desktop-portal is not running" if "ServiceUnknown" in str(name)
                   else f"no {SHORTCUTS} interface ({reply.body[0] if reply.body else name})")
            raise HotkeyUnavailable(NO_PORTAL.format(why=why))
        return int(reply.body[0][1])

    # ---- worker thread ---------------------------------------------------------------
    def _request(self, conn, method: str, signature: str, body: tuple, token: str,
                 timeout: float) -> dict:
        """Call a portal method that answers through a Request object; its results."""
        from jeepney import DBusAddress, MatchRule, MessageType, message_bus, new_method_call

        sender = conn.unique_name.lstrip(":").replace(".", "_")
        path = f"{PORTAL_PATH}/request/{sender}/{token}"
        rule = MatchRule(type="signal", interface=REQUEST, member="Response", path=path)
        conn.send_and_get_reply(message_bus.AddMatch(rule), timeout=REPLY_TIMEOUT_S)
        portal = DBusAddress(PORTAL_PATH, bus_name=PORTAL_BUS, interface=SHORTCUTS)
        with conn.filter(rule) as queue:
            reply = conn.send_and_get_reply(new_method_call(portal, method, signature, body),
                                            timeout=REPLY_TIMEOUT_S)
            if reply.header.message_type == MessageType.error:
                raise RuntimeError(f"{method}: {reply.body[0] if reply.body else 'error'}")
            response = conn.recv_until_filtered(queue, timeout=timeout)
        code, results = response.body
        if code != 0:
            raise RuntimeError(f"{method} was {'declined' if code == 1 else 'refused'}")
        return results

    def _run(self) -> None:
        from jeepney import MatchRule, message_bus

        conn = self._conn
        try:
            token = "earshot" + secrets.token_hex(4)
            results = self._request(conn, "CreateSession", "a{sv}", ({
                "handle_token": ("s", token), "session_handle_token": ("s", token)},),
                token, REPLY_TIMEOUT_S)
            session = results["session_handle"][1]
            bind = "earshot" + secrets.token_hex(4)
            shortcut = (SHORTCUT_ID, {
                "description": ("s", "Start or stop Earshot dictation"),
                "preferred_trigger": ("s", portal_trigger(self.combination))})
            results = self._request(conn, "BindShortcuts", "oa(sa{sv})sa{sv}", (
                session, [shortcut], "", {"handle_token": ("s", bind)}), bind, USER_TIMEOUT_S)
            granted = {sid: props for sid, props in results.get("shortcuts", ("", []))[1]}
            if SHORTCUT_ID not in granted:
                raise RuntimeError("the shortcut was not granted")
            trigger = granted[SHORTCUT_ID].get("trigger_description", ("s", ""))[1]
            self._event.emit("bound", trigger)
            rule = MatchRule(type="signal", interface=SHORTCUTS, path=PORTAL_PATH)
            conn.send_and_get_reply(message_bus.AddMatch(rule), timeout=REPLY_TIMEOUT_S)
            with conn.filter(rule) as queue:
                while not self._stopping.is_set():
                    try:
                        msg = conn.recv_until_filtered(queue, timeout=0.5)
                    except TimeoutError:
                        continue
                    member = msg.header.fields.get(3)  # HeaderFields.member
                    if msg.body[0] == session and msg.body[1] == SHORTCUT_ID:
                        self._event.emit(member, "")
        except Exception as exc:
            if not self._stopping.is_set():
                log.warning("portal global shortcut failed: %s", exc)
                self._event.emit("unavailable", NO_PORTAL.format(why=str(exc)))

    # ---- GUI thread ------------------------------------------------------------------
    @Slot(str, str)
    def _on_event(self, kind: str, detail: str) -> None:
        if kind == "bound":
            self.bound.emit(detail)
        elif kind == "unavailable":
            self.unavailable.emit(detail)
        elif kind == "Activated":
            if self.mode == "toggle":
                self.activated.emit()
            else:
                self.held.emit(True)
        elif kind == "Deactivated" and self.mode == "hold":
            self.held.emit(False)
