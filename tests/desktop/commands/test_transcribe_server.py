"""`earshot transcribe --server`: the same output through the streaming protocol."""

import json
import subprocess
import sys

import pytest

from edge_server.evaluation import word_error_rate
from tests.conftest import DEV, LONGFORM, dev_rows
from tests.server_harness import start_server


@pytest.fixture(scope="module")
def server():
    srv = start_server("--token", "tkn", "--auth", "all")
    yield srv
    srv.stop()


def earshot(*args):
    return subprocess.run([sys.executable, "-m", "desktop.cli", *args],
                          capture_output=True, text=True, timeout=300)


def test_files_streamed_to_the_server(server):
    rows = dev_rows(("sherpa-test-wavs",))
    files = [str(DEV / r["path"]) for r in rows] + [str(LONGFORM / "two_cities.wav")]
    out = earshot("transcribe", "--server", server.url, "--token", "tkn", "--format", "json",
                  *files)
    assert out.returncode == 0, out.stderr
    docs = json.loads(out.stdout)
    assert [d["file"] for d in docs] == files
    score = word_error_rate([r["transcript"] for r in rows], [d["text"] for d in docs[:3]])
    assert score.wer <= 0.06
    assert len(docs[3]["segments"]) >= 3 and "worst of times" in docs[3]["text"]


def test_realtime_srt(server, tmp_path):
    out = earshot("transcribe", "--server", server.url, "--token", "tkn", "--realtime",
                  "--format", "srt", str(LONGFORM / "beckett.wav"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("-->") >= 4 and "try again" in out.stdout.lower()


def test_server_errors_are_one_line(server, tmp_path):
    out = earshot("transcribe", "--server", server.url, "--token", "bad",
                  str(DEV / "sherpa-test-wavs/0.wav"))
    assert out.returncode == 1 and "unauthorized" in out.stderr and "Traceback" not in out.stderr
    out = earshot("transcribe", "--server", "http://127.0.0.1:9",
                  str(DEV / "sherpa-test-wavs/0.wav"))
    assert out.returncode == 1 and "unreachable" in out.stderr
