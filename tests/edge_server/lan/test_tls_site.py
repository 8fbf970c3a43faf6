"""One port, two doors: https/wss for everyone, plain http from this machine only.

The server binds 0.0.0.0 with --no-mdns (nothing is announced); every request here comes
from 127.0.0.1. Requests from another host are in test_lan_access.py and test_two_hosts.py.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
import urllib.request

import pytest

from tests.server_harness import start_server


@pytest.fixture(scope="module")
def lan_bound(tmp_path_factory):
    config = tmp_path_factory.mktemp("cfg") / "server.toml"
    config.write_text("handshake_timeout_s = 1.0\n")
    server = start_server("--noop-engine", "--host", "0.0.0.0", "--config", str(config))
    yield server
    server.stop()


def test_wildcard_bind_serves_https_with_the_identity_and_plain_to_loopback(lan_bound):
    assert lan_bound.url.startswith("https://0.0.0.0:") and len(lan_bound.fingerprint) == 64
    port = lan_bound.url.rsplit(":", 1)[1]
    with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz",
                                context=lan_bound.ssl_context) as resp:
        health = json.loads(resp.read())
    assert health["server"]["fingerprint"] == lan_bound.fingerprint
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz") as resp:
        assert json.loads(resp.read())["status"] == "ready"  # local tools need no TLS


def test_a_silent_connection_is_closed_at_the_handshake_timeout(lan_bound):
    port = int(lan_bound.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(10)
        started = time.monotonic()
        assert sock.recv(1) == b""  # closed by the server, not by our timeout
        assert 0.5 < time.monotonic() - started < 5


def test_garbage_and_failed_handshakes_leave_the_server_serving(lan_bound):
    port = int(lan_bound.url.rsplit(":", 1)[1])
    for payload in (b"\x16\x03\x01\x00\x05hello", b"\x00\xff" * 100, b"GET / HTTP/1.1\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.settimeout(10)
            sock.sendall(payload)
            with contextlib.suppress(ConnectionResetError, TimeoutError):
                sock.recv(4096)
    assert lan_bound.health()["status"] == "ready"
