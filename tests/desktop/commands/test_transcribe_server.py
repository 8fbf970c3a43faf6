"""`earshot transcribe --server`: the same output through the streaming protocol."""

import asyncio
import json
import random
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from desktop.commands.remote_transcribe import stream_files
from desktop.stream_client import BATCH_RETRY, RetryPolicy, StreamClient, parse_retry_after
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


def rejected(server) -> int:
    with urllib.request.urlopen(server.url + "/api/stats", timeout=5) as resp:
        return json.loads(resp.read())["totals"]["sessions_rejected"]


def test_a_full_server_is_waited_for_not_failed():
    """A one-session server, taken: both real-time files are refused (503 + Retry-After),
    wait as asked, and are transcribed once the session is free -- none fails."""
    server = start_server("--max-sessions", "1")
    files = [str(DEV / "sherpa-test-wavs/0.wav"), str(DEV / "sherpa-test-wavs/8k.wav")]

    async def hold_the_only_session_then_free_it() -> subprocess.Popen:
        holder = StreamClient(server.url, partials=False)
        await holder.connect()
        proc = subprocess.Popen([sys.executable, "-m", "desktop.cli", "transcribe", "--server",
                                 server.url, "--realtime", "--format", "json", *files],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while rejected(server) < 2 and proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)  # until both files were turned away
        await holder.finish(timeout_s=30)
        return proc

    try:
        proc = asyncio.run(hold_the_only_session_then_free_it())
        stdout, stderr = proc.communicate(timeout=300)
        refusals = rejected(server)
    finally:
        server.stop()
    assert proc.returncode == 0, stderr
    assert "error" not in stderr
    docs = json.loads(stdout)
    assert [d["file"] for d in docs] == files
    assert "yellow lamps" in docs[0]["text"].lower()
    assert "apprehension" in docs[1]["text"].lower()
    assert refusals >= 2


@pytest.fixture(scope="module")
def full_server(tmp_path_factory):
    """Never admits a stream; asks clients to come back in 1 s."""
    config = tmp_path_factory.mktemp("full") / "server.toml"
    config.write_text("retry_after_s = 1\n")
    srv = start_server("--noop-engine", "--max-sessions", "0", "--config", str(config))
    yield srv
    srv.stop()


@pytest.mark.parametrize(("policy", "attempts"), [
    (RetryPolicy(max_attempts=3, max_wait_s=60), 3),
    (RetryPolicy(max_attempts=30, max_wait_s=2.5), None),
])
def test_a_server_full_for_longer_than_the_cap_fails_clearly(full_server, policy, attempts):
    before = rejected(full_server)
    started = time.monotonic()
    (result,) = asyncio.run(stream_files([DEV / "sherpa-test-wavs/0.wav"], full_server.url,
                                         None, False, retry=policy))
    elapsed = time.monotonic() - started
    tries = rejected(full_server) - before
    assert result.transcript is None
    message = result.error
    assert "overloaded: server refused the stream (HTTP 503)" in message
    assert f"still refused after {tries} attempt(s)" in message and "Retry-After 1 s" in message
    assert f"gave up (waits are capped at {policy.max_attempts} attempts" in message
    assert elapsed >= tries - 1  # each wait was at least the server's Retry-After
    if attempts is not None:
        assert tries == attempts
    else:  # the 2.5 s cap stopped it: two or three attempts, 1-1.25 s apart
        assert 2 <= tries <= 3


def test_retry_policy_waits_as_asked_jittered_and_capped():
    policy = RetryPolicy(max_delay_s=30.0, first_delay_s=1.0, jitter=0.25)
    rng = random.Random(3)
    waits = [policy.delay(1, 5.0, rng) for _ in range(200)]
    assert min(waits) >= 5.0 and max(waits) <= 6.25 and len(set(waits)) > 100
    steady = RetryPolicy(first_delay_s=1.0, jitter=0.0)
    assert [steady.delay(n, None) for n in (1, 2, 3, 4)] == [1, 2, 4, 8]  # no Retry-After
    assert policy.delay(9, 3600.0) == 30.0 and policy.delay(40, None) == 30.0  # never above
    assert BATCH_RETRY.max_wait_s == 300.0 and BATCH_RETRY.max_delay_s == 30.0
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


def test_retry_after_header_forms():
    assert parse_retry_after("5") == 5.0 and parse_retry_after(" 2.5 ") == 2.5
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("-3") == 0.0 and parse_retry_after("nan") is None
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 <= parse_retry_after(when) <= 31
