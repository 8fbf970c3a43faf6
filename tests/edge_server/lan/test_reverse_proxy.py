"""A real server behind a (pretend) reverse proxy on the same box: requests from 127.0.0.1
that carry forwarding headers, with and without `--trusted-proxies 127.0.0.1`."""

from __future__ import annotations

import asyncio
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import pytest

from edge_server.protocol import PROTOCOL_VERSION, STREAM_PATH
from tests.server_harness import ServerProcess, start_server

TOKEN = "proxy-test-token"
CLIENT = "203.0.113.7"


@pytest.fixture(scope="module")
def default_server():
    srv = start_server("--noop-engine")
    yield srv
    assert srv.stop() == 0


@pytest.fixture(scope="module")
def proxied_server(tmp_path_factory):
    cfg = tmp_path_factory.mktemp("cfg") / "server.toml"
    cfg.write_text("max_auth_failures = 3\nmax_connections_per_ip = 1\n")
    srv = start_server("--noop-engine", "--trusted-proxies", "127.0.0.1", "--token", TOKEN,
                       "--config", str(cfg))
    yield srv
    assert srv.stop() == 0


def models(srv: ServerProcess, token: str | None = None, **headers: str) -> int:
    """Status of `GET /v1/models` (needs auth) with `X_Forwarded_For=...`-style headers."""
    sent = {name.replace("_", "-"): value for name, value in headers.items()}
    if token:
        sent["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(srv.url + "/v1/models", headers=sent)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


async def open_stream(http: aiohttp.ClientSession, srv: ServerProcess, token: str | None,
                      headers: dict[str, str]):
    """(answer, ws): answer is "ready", the error code of the hello, or "http_<status>"."""
    url = srv.url.replace("http", "ws", 1) + STREAM_PATH
    try:
        ws = await http.ws_connect(url, headers=headers)
    except aiohttp.WSServerHandshakeError as exc:
        return f"http_{exc.status}", None
    await ws.send_json({"type": "hello", "protocol": PROTOCOL_VERSION,
                        "session": os.urandom(8).hex(), "token": token,
                        "audio": {"encoding": "pcm_s16le", "sample_rate": 16_000,
                                  "channels": 1}})
    msg = await ws.receive_json(timeout=10)
    return (msg["type"] if msg["type"] == "ready" else msg["code"]), ws


def hello(srv: ServerProcess, token: str | None = None, **headers: str) -> str:
    async def run() -> str:
        sent = {name.replace("_", "-"): value for name, value in headers.items()}
        async with aiohttp.ClientSession() as http:
            answer, ws = await open_stream(http, srv, token, sent)
            if ws is not None:
                await ws.close()
            return answer
    return asyncio.run(run())


def test_loopback_is_trusted_only_without_forwarding_headers(default_server):
    srv = default_server  # its failures count against 127.0.0.1: stay below 10 of them
    token = Path(os.environ["EARSHOT_SERVER_TOKEN_FILE"]).read_text().strip()
    assert models(srv) == 200
    assert models(srv, X_Forwarded_For=CLIENT) == 401
    assert models(srv, Forwarded=f"for={CLIENT}") == 401
    assert models(srv, X_Forwarded_Proto="https") == 401
    assert models(srv, X_Forwarded_For="127.0.0.1") == 401  # not believed from anyone
    assert models(srv, token, X_Forwarded_For=CLIENT) == 200
    assert hello(srv) == "ready"
    assert hello(srv, X_Forwarded_For=CLIENT) == "unauthorized"
    assert hello(srv, token, X_Forwarded_For=CLIENT) == "ready"


def wait_for_log(srv: ServerProcess, text: str, timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(text in line for line in list(srv.log)):
            return True
        time.sleep(0.05)
    return False


def test_behind_a_trusted_proxy_the_client_is_checked_and_locked_out(proxied_server):
    srv = proxied_server
    for _ in range(3):
        assert models(srv, X_Forwarded_For=f"127.0.0.1, {CLIENT}") == 401
    assert models(srv, TOKEN, X_Forwarded_For=CLIENT) == 429  # locked out, even with the token
    assert models(srv, TOKEN, Forwarded=f'for="{CLIENT}:4711";proto=https') == 429
    assert hello(srv, TOKEN, X_Forwarded_For=CLIENT) == "http_429"
    assert wait_for_log(srv, f"locking out {CLIENT} ")
    # the proxy's own address is not locked out: direct loopback clients carry on ...
    assert models(srv) == 200
    # ... and so do other clients behind it, with the token
    assert models(srv, TOKEN, X_Forwarded_For="198.51.100.9") == 200
    assert models(srv, X_Forwarded_For="198.51.100.9") == 401
    # a client on the proxy's own machine is loopback; an unreadable header never is
    assert models(srv, X_Forwarded_For="127.0.0.1") == 200
    assert models(srv, X_Forwarded_For="127.0.0.1 oops") == 401
    assert not any("locking out 127.0.0.1" in line for line in list(srv.log))


def test_streams_behind_a_trusted_proxy_need_the_token_and_count_per_client(proxied_server):
    srv = proxied_server
    assert hello(srv, X_Forwarded_For="198.51.100.20") == "unauthorized"

    async def run() -> tuple[str, str, str]:
        async with aiohttp.ClientSession() as http:
            first, ws1 = await open_stream(http, srv, TOKEN, {"X-Forwarded-For": "198.51.100.21"})
            # max_connections_per_ip = 1 counts clients, not the proxy they all come through
            other, ws2 = await open_stream(http, srv, TOKEN, {"X-Forwarded-For": "198.51.100.22"})
            again, _ = await open_stream(http, srv, TOKEN, {"X-Forwarded-For": "198.51.100.21"})
            for ws in (ws1, ws2):
                if ws is not None:
                    await ws.close()
            return first, other, again

    assert asyncio.run(run()) == ("ready", "ready", "http_429")
