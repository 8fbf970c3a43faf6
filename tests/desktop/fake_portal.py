"""A stand-in for xdg-desktop-portal's GlobalShortcuts, for tests: there is no Wayland
compositor here, so nothing real can grant a global shortcut.

    python -m tests.desktop.fake_portal BUS_ADDRESS [--decline]

Owns `org.freedesktop.portal.Desktop` on that bus and serves, on
/org/freedesktop/portal/desktop, the GlobalShortcuts `version` property (1),
CreateSession and BindShortcuts (answered, as the real portal does, through a Request
object's `Response` signal; `--decline`: BindShortcuts answers 1, the user cancelled).
After a successful bind it prints `bound <id> <preferred_trigger>` and sends Activated,
then Deactivated 300 ms later, for that session and shortcut. Prints `ready` once it owns
the name. Ends when stdin closes.
"""

from __future__ import annotations

import sys
import threading
import time

from jeepney import (
    DBusAddress,
    HeaderFields,
    MessageType,
    message_bus,
    new_error,
    new_method_return,
    new_signal,
)
from jeepney.io.blocking import open_dbus_connection

PATH = "/org/freedesktop/portal/desktop"
SHORTCUTS = "org.freedesktop.portal.GlobalShortcuts"


def main() -> int:
    address, decline = sys.argv[1], "--decline" in sys.argv[2:]
    conn = open_dbus_connection(address)
    conn.send_and_get_reply(message_bus.RequestName("org.freedesktop.portal.Desktop"))
    threading.Thread(target=lambda: (sys.stdin.read(), conn.close()), daemon=True).start()
    print("ready", flush=True)
    sessions = 0

    def respond(sender: str, token: str, code: int, results: dict) -> None:
        request = f"{PATH}/request/{sender.lstrip(':').replace('.', '_')}/{token}"
        signal = new_signal(DBusAddress(request, interface="org.freedesktop.portal.Request"),
                            "Response", "ua{sv}", (code, results))
        signal.header.fields[HeaderFields.destination] = sender
        conn.send(signal)

    while True:
        try:
            msg = conn.receive()
        except Exception:  # closed: the test is over
            return 0
        if msg.header.message_type != MessageType.method_call:
            continue
        fields = msg.header.fields
        member, sender = fields.get(HeaderFields.member), fields.get(HeaderFields.sender)
        if member == "Get" and tuple(msg.body) == (SHORTCUTS, "version"):
            conn.send(new_method_return(msg, "v", (("u", 1),)))
        elif member == "CreateSession":
            sessions += 1
            token = msg.body[0]["handle_token"][1]
            conn.send(new_method_return(msg, "o", (f"{PATH}/request/x/{token}",)))
            respond(sender, token, 0, {"session_handle": ("s", f"{PATH}/session/s{sessions}")})
        elif member == "BindShortcuts":
            session, shortcuts, _parent, options = msg.body
            token = options["handle_token"][1]
            conn.send(new_method_return(msg, "o", (f"{PATH}/request/x/{token}",)))
            if decline:
                respond(sender, token, 1, {})
                continue
            granted = [(sid, {"description": props["description"],
                              "trigger_description": ("s", "Ctrl+Alt+D")})
                       for sid, props in shortcuts]
            respond(sender, token, 0, {"shortcuts": ("a(sa{sv})", granted)})
            sid, props = shortcuts[0]
            print(f"bound {sid} {props['preferred_trigger'][1]}", flush=True)
            emitter = DBusAddress(PATH, interface=SHORTCUTS)
            for name in ("Activated", "Deactivated"):
                time.sleep(0.3)
                conn.send(new_signal(emitter, name, "osta{sv}",
                                     (session, sid, int(time.time() * 1000), {})))
        else:
            conn.send(new_error(msg, "org.freedesktop.DBus.Error.UnknownMethod",
                                "s", (f"no {member} here",)))


if __name__ == "__main__":
    sys.exit(main())
