"""`earshot` as a user starts it: scripted runs, crash recovery, and the no-device paths."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import DEV, LONGFORM


def env_for(tmp_path, **extra) -> dict:
    env = dict(os.environ, XDG_DATA_HOME=str(tmp_path / "data"),
               XDG_CONFIG_HOME=str(tmp_path / "config"), PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def earshot(args, env, timeout=180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "desktop.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_scripted_run_writes_transcript_and_screenshot(tmp_path):
    out = tmp_path / "t.json"
    shot = tmp_path / "window.png"
    run = earshot(["--audio-file", str(LONGFORM / "beckett.wav"), "--fast", "--quit-when-done",
                   "--transcript-out", str(out), "--screenshot", str(shot)], env_for(tmp_path))
    assert run.returncode == 0, run.stderr
    (doc,) = json.loads(out.read_text())
    assert "try again" in doc["text"].lower() and len(doc["segments"]) >= 4
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:4] == b"\x89PNG"


def test_killed_app_is_recovered_on_next_start(tmp_path):
    env = env_for(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "desktop.cli", "--audio-file", str(DEV / "sherpa-test-wavs/1.wav"),
         "--quit-when-done"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    journal = tmp_path / "data" / "earshot" / "journal"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until several seconds of audio are journaled
        pcm = list(journal.glob("*.pcm"))
        if pcm and pcm[0].stat().st_size > 16000 * 2 * 8:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    out = tmp_path / "recovered.txt"
    run = earshot(["--recover", "--quit-when-done", "--transcript-out", str(out)], env)
    assert run.returncode == 0, run.stderr
    text = out.read_text().lower()
    assert "direct consequence" in text and "lovely child" in text
    again = earshot(["--recover", "--quit-when-done"], env)  # nothing left to recover
    assert again.returncode == 0


def test_no_display_is_one_clear_line(tmp_path):
    env = env_for(tmp_path)
    for key in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        env.pop(key, None)
    run = earshot([], env, timeout=60)
    assert run.returncode == 1
    assert run.stderr.strip().startswith("earshot: error: no display found")
    assert "Traceback" not in run.stderr


def test_no_model_is_reported_not_crashed(tmp_path):
    empty = tmp_path / "models"
    empty.mkdir()
    run = earshot(["--audio-file", str(LONGFORM / "beckett.wav"), "--quit-when-done"],
                  env_for(tmp_path, EARSHOT_MODELS_DIR=str(empty)))
    assert run.returncode == 1
    assert "not installed" in run.stderr and "earshot models fetch" in run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize("missing", ["nope.wav"])
def test_missing_audio_file(tmp_path, missing):
    run = earshot(["--audio-file", str(tmp_path / missing), "--quit-when-done"],
                  env_for(tmp_path), timeout=60)
    assert run.returncode == 1 and "no such file" in run.stderr
