"""`earshot --toggle|--start|--stop|--show` against a RemoteControl listening in this test
(real QLocalServer, the real `earshot` command in a subprocess as the client)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from PySide6.QtNetwork import QLocalServer

from desktop.remote_control import NotRunning, RemoteControl, send_command, server_name


def earshot(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "desktop.cli", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(qtbot, proc: subprocess.Popen) -> tuple[int, str, str]:
    """Let the GUI thread answer while the client runs."""
    qtbot.waitUntil(lambda: proc.poll() is not None, timeout=20_000)
    out, err = proc.communicate()
    return proc.returncode, out.strip(), err.strip()


@pytest.fixture
def own_config(monkeypatch, tmp_path):
    """A config folder of its own: its own socket name."""
    monkeypatch.setenv("EARSHOT_CONFIG_DIR", str(tmp_path / "config"))


def test_nothing_listening(qapp, own_config):
    with pytest.raises(NotRunning, match="Earshot is not running"):
        send_command("toggle", timeout_s=1)
    with pytest.raises(ValueError, match="unknown command"):
        send_command("explode")
    run = subprocess.run([sys.executable, "-m", "desktop.cli", "--toggle"],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 1
    assert run.stderr.strip() == "earshot: error: Earshot is not running"


def test_the_name_is_per_user_and_config_folder(qapp, monkeypatch, tmp_path):
    monkeypatch.setenv("EARSHOT_CONFIG_DIR", str(tmp_path / "a"))
    a = server_name()
    monkeypatch.setenv("EARSHOT_CONFIG_DIR", str(tmp_path / "b"))
    b = server_name()
    assert a != b and a.startswith(f"earshot-{os.getuid()}-")


def test_commands_reach_the_app_and_its_replies_come_back(qtbot, own_config):
    state = {"recording": False}

    def handler(command: str) -> str:
        if command == "show":
            return "ok: window shown"
        if command == "toggle":
            state["recording"] = not state["recording"]
            return "ok: dictation " + ("started" if state["recording"] else "stopped")
        if command == "stop":
            raise RuntimeError("the microphone vanished")
        return "error: no microphone"

    remote = RemoteControl(handler)
    assert remote.listen()
    try:
        assert finish(qtbot, earshot("--toggle")) == (0, "ok: dictation started", "")
        assert finish(qtbot, earshot("--toggle")) == (0, "ok: dictation stopped", "")
        assert finish(qtbot, earshot("--show")) == (0, "ok: window shown", "")
        assert finish(qtbot, earshot("--start")) == (1, "", "earshot: error: no microphone")
        assert finish(qtbot, earshot("--stop")) == (
            1, "", "earshot: error: the microphone vanished")  # the app keeps listening
        assert finish(qtbot, earshot("--show"))[0] == 0
        assert remote.received == ["toggle", "toggle", "show", "start", "stop", "show"]
        # a second app of the same user does not take over; the first keeps answering
        second = RemoteControl(lambda c: "ok: second")
        assert not second.listen()
        assert finish(qtbot, earshot("--show"))[1] == "ok: window shown"
    finally:
        remote.close()


def test_a_stray_client_gets_an_error_line(qtbot, own_config):
    remote = RemoteControl(lambda c: "ok")
    assert remote.listen()
    try:
        path = Path(tempfile.gettempdir()) / remote.name  # where Qt puts the socket on Unix
        proc = subprocess.Popen([sys.executable, "-c", (
            "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
            "s.sendall(b'reboot\\n'); print(s.recv(200).decode().strip())"), str(path)],
            stdout=subprocess.PIPE, text=True)
        qtbot.waitUntil(lambda: proc.poll() is not None, timeout=10_000)
        assert proc.stdout.read().strip() == "error: unknown command 'reboot'"
    finally:
        remote.close()


@pytest.mark.skipif(sys.platform == "win32", reason="Unix socket file")
def test_a_socket_left_by_a_crash_is_taken_over(qtbot, own_config):
    name = server_name()
    QLocalServer.removeServer(name)
    stale = Path(tempfile.gettempdir()) / name
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))  # the file stays; nobody listens (a killed app's socket)
    s.close()
    try:
        remote = RemoteControl(lambda c: "ok: fresh")
        assert remote.listen()
        assert finish(qtbot, earshot("--show"))[1] == "ok: fresh"
        remote.close()
    finally:
        stale.unlink(missing_ok=True)
