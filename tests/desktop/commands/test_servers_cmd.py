"""`earshot pair` / `servers` / `transcribe --server` guards, through the installed command."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import DEV

WAV = DEV / "sherpa-test-wavs" / "8k.wav"


def earshot(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "desktop.cli", *args], capture_output=True,
                          text=True, timeout=60)


def test_a_token_is_never_sent_over_plain_http_to_another_host():
    out = earshot("transcribe", "--server", "http://10.255.255.1:8765", "--token", "secret",
                  str(WAV))
    assert out.returncode == 1 and "plain http on another host" in out.stderr
    assert "Traceback" not in out.stderr


def test_auto_takes_no_single_token():
    out = earshot("transcribe", "--server", "auto", "--token", "secret", str(WAV))
    assert out.returncode == 1 and "--token names one server" in out.stderr


def test_unpair_of_an_unknown_server_is_one_line():
    out = earshot("unpair", "0123456789abcdef")
    assert out.returncode == 1 and out.stderr.startswith("earshot: error: not paired")
