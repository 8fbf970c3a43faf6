"""Pairing and probing against real TLS servers on loopback: the real edge server, and
an impostor that answers pairing its own way."""

from __future__ import annotations

import asyncio
import json
import ssl

import pytest
from aiohttp import web

from desktop.lan.pairing import PairingError, normalise_url, pair, probe
from desktop.stream_client import StreamClient, StreamError
from edge_server.lan.identity import load_or_create_identity
from tests.server_harness import start_server


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    state = tmp_path_factory.mktemp("box")
    identity = load_or_create_identity(state)
    server = start_server("--noop-engine", "--auth", "all", "--token", "a-long-random-token-x",
                          "--state-dir", str(state), "--tls-cert", str(identity.cert_path),
                          "--tls-key", str(identity.key_path))
    yield server, identity
    server.stop()


def test_pairing_proves_the_token_and_binds_the_certificate(box):
    server, identity = box
    verified = asyncio.run(pair(server.url, "a-long-random-token-x"))
    assert verified.server_id == identity.server_id
    assert verified.fingerprint == identity.fingerprint
    for wrong in ("guess", None):
        with pytest.raises(PairingError) as err:
            asyncio.run(pair(server.url, wrong))
        assert err.value.code == ("wrong_token" if wrong else "token_required")
    with pytest.raises(PairingError) as err:
        asyncio.run(pair(server.url, "a-long-random-token-x", expected_fingerprint="ab" * 32))
    assert err.value.code == "identity_mismatch"
    with pytest.raises(PairingError) as err:
        asyncio.run(pair(server.url, "a-long-random-token-x", expected_id="0123456789abcdef"))
    assert err.value.code == "identity_mismatch"


def test_pairing_answers_are_rate_limited_per_address(box):
    server, _ = box
    codes = []
    for _ in range(12):
        try:
            asyncio.run(pair(server.url, "a-long-random-token-x"))
            codes.append("ok")
        except PairingError as exc:
            codes.append(exc.code)
    assert codes.count("ok") <= 10 and codes[-1] == "bad_response"  # 429 after 10 a minute


async def _impostor(tmp_path, answer: dict):
    identity = load_or_create_identity(tmp_path / "impostor")

    async def pair_answer(request: web.Request) -> web.Response:
        return web.json_response(dict(answer, fingerprint=identity.fingerprint,
                                      nonce="00" * 16))

    app = web.Application()
    app.router.add_post("/api/pair", pair_answer)
    runner = web.AppRunner(app)
    await runner.setup()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(identity.cert_path, identity.key_path)
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    return runner, f"https://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"


def test_an_impostor_saying_no_token_is_needed_never_gets_one(tmp_path):
    async def run():
        runner, url = await _impostor(tmp_path, {"server_id": "feedfeedfeedfeed",
                                                 "name": "box", "token_required": False,
                                                 "proof": None})
        try:
            with pytest.raises(PairingError) as err:
                await pair(url, "the-real-token")  # the user typed the box's token
            assert err.value.code == "wrong_token"
            open_server = await pair(url, None)  # no token typed: pinned, nothing to leak
            assert open_server.server_id == "feedfeedfeedfeed"
        finally:
            await runner.cleanup()

    asyncio.run(run())


def test_a_pin_is_never_used_over_plain_http(box):
    server, identity = box
    plain = server.url.replace("https://", "http://")
    with pytest.raises(PairingError) as err:
        asyncio.run(probe(plain, identity.fingerprint))
    assert err.value.code == "tls_required"
    assert asyncio.run(probe(server.url, identity.fingerprint))["status"] == "ready"
    with pytest.raises(PairingError) as err:
        asyncio.run(probe(server.url, "cd" * 32))
    assert err.value.code == "identity_mismatch"

    async def stream(url):
        client = StreamClient(url, token="a-long-random-token-x", fingerprint=identity.fingerprint)
        await client.connect()
        await client.close()

    with pytest.raises(StreamError) as err:
        asyncio.run(stream(plain))
    assert err.value.code == "tls_required"
    asyncio.run(stream(server.url))


def test_addresses_are_https_unless_on_this_machine():
    assert normalise_url("box.local:8765") == "https://box.local:8765"
    assert normalise_url("10.0.0.5:8765/") == "https://10.0.0.5:8765"
    assert normalise_url("127.0.0.1:8765") == "http://127.0.0.1:8765"
    assert normalise_url("localhost:8765") == "http://localhost:8765"
    assert normalise_url("http://10.0.0.5:8765/v1") == "http://10.0.0.5:8765"
    with pytest.raises(ValueError):
        normalise_url("ftp://box")
    assert json.dumps(normalise_url("https://[::1]:8765")) == '"https://[::1]:8765"'
