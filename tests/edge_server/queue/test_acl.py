"""A Redis ACL user limited to `earshot:*` keys and Earshot's commands: the very `ACL SETUSER`
line of docs/scale-out.md runs a gateway and workers (Redis logs no refusal), and a user
lacking any one permission is refused at start, in one line, exit 2."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from edge_server.evaluation import word_error_rate
from edge_server.queue import streams as S
from edge_server.queue.worker_cli import connect
from tests.conftest import DEV, REPO, dev_rows, speech_with_pauses
from tests.redis_server import RedisServer, start_worker
from tests.server_harness import start_server, stream_audio

ROWS = dev_rows(("pocketsphinx-testdata",))[:2]
WORKER = ("--model", "moonshine-tiny-en", "--device", "cpu", "--threads", "1")
USER_PASSWORD = "acl-user-pass"


def doc_acl_line() -> str:
    """The `ACL SETUSER earshot ...` line as docs/scale-out.md writes it."""
    text = (REPO / "docs" / "scale-out.md").read_text()
    (line,) = re.findall(r"^ACL SETUSER earshot .*$", text, re.MULTILINE)
    return line


@pytest.fixture(scope="module")
def redis_acl():
    """A Redis whose default user needs a password, with the documented `earshot` user."""
    server = RedisServer.start(password="admin-pass")
    admin = server.client()
    admin.execute_command(*doc_acl_line().replace(">PASSWORD", f">{USER_PASSWORD}").split())
    admin.acl_log_reset()
    yield server
    server.stop()


def _user(server: RedisServer, name: str, line: str) -> str:
    server.client().execute_command(*line.split())
    return server.url_as(name, USER_PASSWORD)


def test_the_documented_line_is_the_one_the_code_checks():
    assert doc_acl_line() == S.acl_setuser("earshot", "PASSWORD")


def test_every_command_in_the_line_is_checked_at_connect(redis_acl):
    """Drop any one command (or the key pattern) and `connect` refuses, naming it."""
    admin = redis_acl.client()
    assert connect(redis_acl.url_as("earshot", USER_PASSWORD)).ping()
    for command in S.COMMANDS:
        line = S.acl_setuser("lacking", USER_PASSWORD).replace(f" +{command}", "")
        url = _user(redis_acl, "lacking", line)
        with pytest.raises(ValueError) as err:
            connect(url)
        message = str(err.value)
        assert "user 'lacking' lacks a permission Earshot needs" in message, message
        named = "MULTI, EXEC" if command in ("multi", "exec") else f"'{command}'"
        assert named in message and USER_PASSWORD not in message, message
    url = _user(redis_acl, "lacking", S.acl_setuser("lacking", USER_PASSWORD).replace(
        "~earshot:*", "~other:*"))
    with pytest.raises(ValueError, match="no permissions to access one of the keys"):
        connect(url)
    left = admin.keys(S.probe_key("*"))  # only the user without DEL left scratch keys,
    assert len(left) == 2 and all(0 < admin.pttl(k) <= 60_000 for k in left)  # expiring
    admin.delete(*left)
    admin.acl_log_reset()


def test_a_user_lacking_a_permission_fails_at_start_in_one_line(redis_acl):
    url = _user(redis_acl, "lacking",
                S.acl_setuser("lacking", USER_PASSWORD).replace(" +xautoclaim", ""))
    for prog, cmd in (("earshot-worker", [sys.executable, "-m", "edge_server.queue.worker_cli",
                                          "--queue", url, "--noop-engine"]),
                      ("earshot-server", [sys.executable, "-m", "edge_server.cli", "--queue",
                                          url, "--noop-engine", "--port", "0", "--no-mdns"])):
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert out.returncode == 2, out
        assert out.stderr.count("\n") == 1 and out.stderr.startswith(f"{prog}: error:"), out
        assert "'xautoclaim'" in out.stderr and "lacks a permission" in out.stderr, out
        assert USER_PASSWORD not in out.stderr
    redis_acl.client().acl_log_reset()


def test_gateway_and_workers_run_as_the_documented_user(redis_acl):
    """Real speech through the gateway, then a poison task (XAUTOCLAIM, XPENDING, the
    dead-letter stream), then clean stops: Redis refused nothing (ACL LOG stays empty)."""
    url = redis_acl.url_as("earshot", USER_PASSWORD)
    admin = redis_acl.client()
    worker = start_worker(url, *WORKER)
    noop = [start_worker(url, "--noop-engine", "--model", "noop",
                         env={"EARSHOT_WORKER_FAULT": "crash-if-peak-above=0.999"})
            for _ in range(3)]
    server = start_server("--queue", url)
    try:
        health = server.health()
        assert health["workers_ready"] == 1 and USER_PASSWORD not in str(health)
        audio = speech_with_pauses([DEV / r["path"] for r in ROWS], pause_s=0.8)
        finals, _ = asyncio.run(stream_audio(server.url, audio))
        assert [f.segment for f in finals] == [0, 1] and not any(f.error for f in finals)
        assert word_error_rate([r["transcript"] for r in ROWS], [f.text for f in finals]).wer < 0.1
        gateway = "acl-gw"  # a poison task: two workers crash on it, the third dead-letters it
        client = connect(url)
        client.xgroup_create(S.result_stream(gateway), S.RESULT_GROUP, id="0", mkstream=True)
        poison = np.zeros(8000, np.float32)
        poison[100] = 1.0
        client.xadd(S.task_stream("noop", True), S.encode_task(gateway, "0.0", "noop", poison))
        for _ in range(200):
            if client.xrange(S.result_stream(gateway)):
                break
            time.sleep(0.1)
        (result,) = client.xrange(S.result_stream(gateway))
        assert b"dead-lettered" in result[1][b"err"], [w.log for w in noop]
        assert len(client.xrange(S.dead_stream("noop"))) == 1
        client.delete(S.result_stream(gateway))
    finally:
        assert server.stop() == 0
        assert worker.stop() == 0
        for w in noop:
            w.stop()
    assert admin.acl_log() == []  # nothing the gateway or a worker sent was refused
    assert not admin.keys(S.WORKER_PATTERN) and not admin.keys(S.probe_key("*"))
