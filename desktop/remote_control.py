"""One Earshot per user, and commands sent to it: `earshot --toggle|--start|--stop|--show`.

The running app listens on a per-user QLocalServer (`server_name()`: from the user and
the config folder, so test runs with their own EARSHOT_CONFIG_DIR never meet a real app;
only the same user may connect). Protocol: the client sends one command line
("toggle", "start", "stop" or "show"), the app answers one line, "ok: ..." or
"error: ...", and closes the connection.

`send_command()` is the client side (no QApplication needed: a blocking QLocalSocket);
it returns the reply, or raises NotRunning when nothing listens. `RemoteControl` is the
app side: a QObject on the GUI thread whose `handler(command) -> reply` runs on the GUI
thread for each command.
"""

from __future__ import annotations

import getpass
import hashlib
import logging
import os
from collections.abc import Callable

from PySide6.QtCore import QObject
from PySide6.QtNetwork import QLocalServer, QLocalSocket

log = logging.getLogger(__name__)
COMMANDS = ("toggle", "start", "stop", "show")
NOT_RUNNING = "Earshot is not running"


class NotRunning(RuntimeError):
    """No Earshot app listens for this user (and config folder)."""


def server_name() -> str:
    """The local socket name of this user's app (the same in the app and the client)."""
    from desktop.lan.config_dir import config_dir

    try:
        user = str(os.getuid())
    except AttributeError:  # Windows
        user = getpass.getuser()
    where = hashlib.sha256(str(config_dir().resolve()).encode()).hexdigest()[:12]
    return f"earshot-{user}-{where}"


def send_command(command: str, timeout_s: float = 5.0, name: str | None = None) -> str:
    """Send `command` to the running app and return its one-line reply.
    Raises NotRunning (nothing listens), ValueError (unknown command), TimeoutError (the
    app accepted but did not answer in time)."""
    if command not in COMMANDS:
        raise ValueError(f"unknown command {command!r}: use one of {', '.join(COMMANDS)}")
    sock = QLocalSocket()
    sock.connectToServer(name or server_name())
    if not sock.waitForConnected(int(timeout_s * 1000)):
        raise NotRunning(NOT_RUNNING)
    sock.write(f"{command}\n".encode())
    sock.flush()
    reply = b""
    while not reply.endswith(b"\n"):
        if not sock.waitForReadyRead(int(timeout_s * 1000)):
            if sock.state() != QLocalSocket.LocalSocketState.ConnectedState and reply:
                break
            sock.abort()
            raise TimeoutError(f"Earshot did not answer {command!r} within {timeout_s:g} s")
        reply += bytes(sock.readAll().data())
    sock.disconnectFromServer()
    return reply.decode("utf-8", "replace").strip()


class RemoteControl(QObject):
    """The app's end: listens under `server_name()` and answers each command with
    `handler(command)` (GUI thread; an exception becomes "error: ...")."""

    def __init__(self, handler: Callable[[str], str], name: str | None = None,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.handler = handler
        self.name = name or server_name()
        self.server = QLocalServer(self)
        self.server.setSocketOptions(QLocalServer.SocketOption.UserAccessOption)
        self.server.newConnection.connect(self._accept)
        self.received: list[str] = []

    def listen(self) -> bool:
        """Start listening. False when another app already answers under the name (asked
        first: on Unix Qt would otherwise replace its socket file); a stale socket left by
        a crash (nobody answering) is removed and taken over."""
        probe = QLocalSocket()
        probe.connectToServer(self.name)
        if probe.waitForConnected(1000):
            probe.abort()
            return False
        QLocalServer.removeServer(self.name)
        ok = self.server.listen(self.name)
        if not ok:
            log.warning("remote control: cannot listen as %s: %s", self.name,
                        self.server.errorString())
        return ok

    def close(self) -> None:
        self.server.close()

    def _accept(self) -> None:
        while self.server.hasPendingConnections():
            sock = self.server.nextPendingConnection()
            sock.readyRead.connect(lambda s=sock: self._read(s))
            sock.disconnected.connect(sock.deleteLater)

    def _read(self, sock: QLocalSocket) -> None:
        if not sock.canReadLine():
            if sock.bytesAvailable() > 256:  # no line in sight: not our client
                sock.abort()
            return
        command = bytes(sock.readLine().data()).decode("utf-8", "replace").strip()
        self.received.append(command)
        if command not in COMMANDS:
            reply = f"error: unknown command {command!r}"
        else:
            try:
                reply = self.handler(command)
            except Exception as exc:  # the app keeps listening; the client hears why
                log.exception("remote command %s failed", command)
                reply = f"error: {exc}"
        sock.write((reply.replace("\n", " ") + "\n").encode())
        sock.flush()
        sock.disconnectFromServer()
