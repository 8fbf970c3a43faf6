"""Dictate into any app, end to end on a real X server (Xvfb): the installed `earshot`
(embedded local server, default model, Qt on xcb) puts its finals into another
application's focused text field, started by the global hotkey pressed with XTEST, or
pasted through the clipboard; and `earshot --toggle` drives a running app."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import soundfile as sf

from desktop.insert.joiner import Joiner
from edge_server.evaluation import normalize
from tests.conftest import DEV, speech_with_pauses
from tests.xdisplay import find_window, focus, focused_window, xserver  # noqa: F401

BIN = Path(sys.executable).parent
EARSHOT = [str(BIN / "earshot")] if (BIN / "earshot").exists() else [
    sys.executable, "-m", "desktop.cli"]
UTTERANCES = ["pocketsphinx-testdata/sense_and_sensibility_01_austen_64kb-0880.wav",
              "pocketsphinx-testdata/sense_and_sensibility_01_austen_64kb-0930.wav",
              "pocketsphinx-testdata/goforward.wav"]


class Proc:
    """A child process whose stdout lines are collected by a thread."""

    def __init__(self, args: list[str], env: dict, stdin=subprocess.DEVNULL) -> None:
        self.proc = subprocess.Popen(args, env=env, stdin=stdin, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.out: list[str] = []
        self.err = ""
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.out.append(line.rstrip("\n"))
            self.lines.put(line.rstrip("\n"))

    def _read_err(self) -> None:
        self.err = self.proc.stderr.read()

    def wait_line(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    break
                continue
            if line.startswith(prefix):
                return line
        raise AssertionError(f"no line {prefix!r} within {timeout:g} s; stdout: {self.out}, "
                             f"exit {self.proc.poll()}, stderr: {self.err[-2000:]}")

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout)
        time.sleep(0.1)  # the reader threads drain the pipes
        return code

    def stop(self) -> None:
        if self.proc.poll() is None:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def app_env(base: dict, tmp_path: Path) -> dict:
    env = dict(base, XDG_DATA_HOME=str(tmp_path / "data"),
               XDG_CONFIG_HOME=str(tmp_path / "config"),
               EARSHOT_CONFIG_DIR=str(tmp_path / "earshot-config"), PYTHONUNBUFFERED="1")
    return env


def start_field(xserver, tmp_path: Path, title: str, *extra: str) -> tuple[Proc, Path]:  # noqa: F811
    out = tmp_path / f"{title}.txt"
    field = Proc([sys.executable, "-m", "tests.text_field_app", title, str(out), *extra],
                 xserver.env(), stdin=subprocess.PIPE)
    field.wait_line("ready", 20)
    return field, out


def joined(finals: list[str]) -> str:
    """What the inserter's joining makes of these finals (desktop.insert.joiner)."""
    joiner = Joiner()
    joiner.reset()
    for text in finals:
        joiner.feed(text)
    return "".join(joiner.units)


def finals_of(transcript: Path) -> list[str]:
    (doc,) = json.loads(transcript.read_text())
    return [s["text"] for s in doc["segments"] if s["text"].strip()]


def wait_for_text(path: Path, expected: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        if text == expected:
            break
        time.sleep(0.1)
    return text


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> Path:
    """Three dev sentences with pauses between them: three finals."""
    path = tmp_path_factory.mktemp("speech") / "three.wav"
    sf.write(path, speech_with_pauses([DEV / u for u in UTTERANCES], pause_s=1.0), 16_000)
    return path


def test_hotkey_dictation_is_typed_into_the_focused_app(xserver, tmp_path, speech):  # noqa: F811
    field, out = start_field(xserver, tmp_path, "Notes - field")
    app = None
    try:
        wid = focus("Notes - field", xserver.display)
        transcript = tmp_path / "t.json"
        app = Proc([*EARSHOT, "--audio-file", str(speech), "--start-on-hotkey",
                    "--insert", "type", "--quit-when-done", "--transcript-out",
                    str(transcript)], app_env(xserver.env(), tmp_path))
        app.wait_line("earshot: ready: Ctrl+Alt+D", 60)
        assert find_window(f"Earshot {_version()}", xserver.display)  # its window is up
        assert focused_window(xserver.display) == wid
        subprocess.run(["xdotool", "key", "ctrl+alt+d"], env=xserver.env(), check=True,
                       timeout=10)  # XTEST, as a keyboard would
        assert app.wait(60) == 0, app.err
        finals = finals_of(transcript)
        assert len(finals) >= 3, finals
        expected = joined(finals)
        text = wait_for_text(out, expected)
        assert text == expected  # word for word, spaced and capitalised by the joiner
        assert normalize(text).split() == normalize(" ".join(finals)).split()
        assert len(normalize(text).split()) >= 15
        assert focused_window(xserver.display) == wid
        assert "focus-lost" not in field.out, "Earshot took the focus"
    finally:
        if app is not None:
            app.stop()
        field.stop()


def test_scripted_paste_restores_the_clipboard(xserver, tmp_path):  # noqa: F811
    log = tmp_path / "clipboard.jsonl"
    keeper = Proc([sys.executable, "-m", "tests.desktop.clipboard_keeper", "copied before",
                   str(log)], xserver.env(), stdin=subprocess.PIPE)
    keeper.wait_line("ready", 20)
    field, out = start_field(xserver, tmp_path, "Paste - field")
    try:
        wid = focus("Paste - field", xserver.display)
        transcript = tmp_path / "t.json"
        run = subprocess.run([*EARSHOT, "--audio-file", str(DEV / "sherpa-test-wavs/0.wav"),
                              "--fast", "--quit-when-done", "--insert", "paste",
                              "--transcript-out", str(transcript)],
                             env=app_env(xserver.env(), tmp_path), capture_output=True,
                             text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        finals = finals_of(transcript)
        assert finals and "yellow lamps" in " ".join(finals).lower()
        assert wait_for_text(out, joined(finals)) == joined(finals)
        seen = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
        assert finals[0].strip() in seen  # what was pasted went through the clipboard
        assert seen[-1] == "copied before"  # and the clipboard got its content back
        assert focused_window(xserver.display) == wid
        assert "focus-lost" not in field.out
    finally:
        field.stop()
        keeper.stop()


def test_toggle_drives_the_running_app(tmp_path):
    env = app_env(dict(os.environ, QT_QPA_PLATFORM="offscreen"), tmp_path)
    for key in ("DISPLAY", "WAYLAND_DISPLAY"):
        env.pop(key, None)  # no X: the hotkey is unavailable, `earshot --toggle` still works

    def toggle(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*EARSHOT, *args], env=env, capture_output=True, text=True,
                              timeout=30)

    none = toggle("--toggle")
    assert none.returncode == 1
    assert none.stderr.strip() == "earshot: error: Earshot is not running"
    transcript = tmp_path / "t.json"
    long = DEV / "sherpa-test-wavs/1.wav"  # about 16 s, fed in real time
    app = Proc([*EARSHOT, "--audio-file", str(long), "--start-on-hotkey", "--quit-when-done",
                "--transcript-out", str(transcript)], env)
    try:
        app.wait_line("earshot: ready: `earshot --toggle`", 60)
        started = toggle("--toggle")
        assert (started.returncode, started.stdout.strip()) == (0, "ok: dictation started")
        again = toggle("--start")
        assert again.stdout.strip() == "ok: already dictating"
        second = toggle()  # a plain second launch: the running window comes forward
        assert second.returncode == 0 and "already running (ok: window shown)" in second.stdout
        time.sleep(4)
        stopped = toggle("--toggle")
        assert (stopped.returncode, stopped.stdout.strip()) == (0, "ok: dictation stopped")
        assert app.wait(60) == 0, app.err
    finally:
        app.stop()
    assert "Global hotkey unavailable: no X display" in app.err
    (doc,) = json.loads(transcript.read_text())
    assert doc["segments"] and doc["segments"][-1]["end"] < 12  # stopped early
    assert "consequence" in doc["text"].lower()
    after = toggle("--stop")
    assert after.returncode == 1 and "not running" in after.stderr


def _version() -> str:
    from edge_server.version import version

    return version()


def test_hidden_until_shown(xserver, tmp_path):  # noqa: F811
    env = app_env(xserver.env(), tmp_path)
    app = Proc([*EARSHOT, "--hidden", "--audio-file", str(DEV / "sherpa-test-wavs/8k.wav"),
                "--fast", "--start-on-hotkey", "--quit-when-done"], env)
    try:
        app.wait_line("earshot: ready:", 60)
        title = f"^Earshot {_version()}$"
        hidden = subprocess.run(["xdotool", "search", "--onlyvisible", "--name", title],
                                env=env, capture_output=True, text=True, timeout=10)
        assert hidden.returncode == 1 and not hidden.stdout.strip()  # no window shown
        shown = subprocess.run([*EARSHOT, "--show"], env=env, capture_output=True, text=True,
                               timeout=30)
        assert shown.stdout.strip() == "ok: window shown"
        assert find_window(f"Earshot {_version()}", xserver.display)
        started = subprocess.run([*EARSHOT, "--toggle"], env=env, capture_output=True,
                                 text=True, timeout=30)
        assert started.stdout.strip() == "ok: dictation started"
        assert app.wait(60) == 0, app.err
    finally:
        app.stop()


def test_push_to_talk_dictates_while_the_keys_are_held(xserver, tmp_path):  # noqa: F811
    env = app_env(xserver.env(), tmp_path)
    transcript = tmp_path / "t.json"
    app = Proc([*EARSHOT, "--hidden", "--hotkey-mode", "hold", "--hotkey", "Ctrl+Shift+F9",
                "--audio-file", str(DEV / "sherpa-test-wavs/1.wav"), "--start-on-hotkey",
                "--quit-when-done", "--transcript-out", str(transcript)], env)
    try:
        app.wait_line("earshot: ready: Ctrl+Shift+F9", 60)
        xdotool = ["xdotool"]
        subprocess.run([*xdotool, "keydown", "ctrl+shift+F9"], env=env, check=True, timeout=10)
        time.sleep(4)  # the file is fed in real time while the keys are down
        subprocess.run([*xdotool, "keyup", "F9", "keyup", "shift", "keyup", "ctrl"], env=env,
                       check=True, timeout=10)
        assert app.wait(60) == 0, app.err
    finally:
        app.stop()
    (doc,) = json.loads(transcript.read_text())
    assert "consequence" in doc["text"].lower()
    assert doc["segments"][-1]["end"] < 10  # it stopped when the keys were let go (of 16 s)
