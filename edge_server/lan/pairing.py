"""Pairing: the server proves it knows the token, bound to the certificate it presents.

`POST /api/pair` with `{"nonce": <16..64 random bytes as hex>}` answers
`{"server_id", "fingerprint", "name", "token_required", "nonce": <server nonce>,
"proof": HMAC-SHA256(token, pairing_message(...))}` (`proof` is null when the server
needs no token). The client computes the same HMAC with the token its user typed and the
fingerprint of the certificate it saw in the TLS handshake: a match proves this is the
server that holds the token (an impostor presents another certificate, and cannot compute
the proof for it without the token), so the client pins id + fingerprint and only then
sends the token. The token itself never travels during pairing. Open without a token;
subject to the failed-attempt lockout like every door, and to `PAIRS_PER_WINDOW` answers
per address per minute (each answer is an HMAC of the token: a long random token makes
guessing hopeless, a short `--token` is warned about at start). Event loop only.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
from collections import OrderedDict, deque
from typing import TYPE_CHECKING

from aiohttp import web

from edge_server.lan.auth import AuthDecision

if TYPE_CHECKING:
    from edge_server.app import EdgeServer

PAIR_PATH = "/api/pair"
PAIRING_VERSION = "earshot-pair-v1"
PAIRS_PER_WINDOW, PAIR_WINDOW_S = 10, 60.0
MIN_TOKEN_CHARS = 22  # ~128 bits of url-safe base64
log = logging.getLogger(__name__)


def pairing_message(client_nonce: str, server_nonce: str, server_id: str,
                    fingerprint: str) -> bytes:
    return "\n".join((PAIRING_VERSION, client_nonce, server_nonce, server_id,
                      fingerprint.lower())).encode()


def pairing_proof(token: str, client_nonce: str, server_nonce: str, server_id: str,
                  fingerprint: str) -> str:
    message = pairing_message(client_nonce, server_nonce, server_id, fingerprint)
    return hmac.new(token.encode(), message, hashlib.sha256).hexdigest()


def _bad_request(message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "invalid_request_error",
                                        "param": "nonce", "code": "bad_pairing_request"}},
                             status=400)


class PairLimiter:
    """At most `per_window` pairing answers per address per `window_s` (each one is an HMAC
    of the token an attacker could try to guess offline; a person pairs once). Bounded:
    the oldest addresses are forgotten beyond `max_addresses`. Event loop only."""

    def __init__(self, per_window: int = PAIRS_PER_WINDOW, window_s: float = PAIR_WINDOW_S,
                 max_addresses: int = 10_000) -> None:
        self.per_window = per_window
        self.window_s = window_s
        self.max_addresses = max_addresses
        self._seen: OrderedDict[str, deque[float]] = OrderedDict()

    def allow(self, address: str) -> bool:
        now = time.monotonic()
        times = self._seen.pop(address, None) or deque()
        while times and now - times[0] > self.window_s:
            times.popleft()
        allowed = len(times) < self.per_window
        if allowed:
            times.append(now)
        self._seen[address] = times
        while len(self._seen) > self.max_addresses:
            self._seen.popitem(last=False)
        return allowed


def weak_token_warning(token: str | None) -> str | None:
    """A warning when a configured token is short enough to guess from pairing answers."""
    if token and len(token) < MIN_TOKEN_CHARS:
        return (f"the token is only {len(token)} characters: pairing answers (open to anyone "
                "who can reach the server) let a short token be guessed offline; use "
                "`earshot-server token --rotate` (43 random characters) instead of --token")
    return None


def add_pairing_routes(app: web.Application, server: EdgeServer) -> None:
    pair_limiter = PairLimiter()
    if (warning := weak_token_warning(server.auth.tokens.current()
                                      if server.auth.token_required else None)):
        log.warning("%s", warning)

    async def pair(request: web.Request) -> web.Response:
        client = server.auth.client(request.remote, request.headers)
        if (locked := server.auth.lockout(client.address)) is not None or \
                not pair_limiter.allow(client.address):
            locked = locked or AuthDecision(False, "too many pairing requests from this "
                                            "address; retry later", PAIR_WINDOW_S)
            return web.json_response(
                {"error": {"message": locked.reason, "type": "rate_limit_error",
                           "param": None, "code": "locked_out"}},
                status=429, headers={"Retry-After": str(max(1, round(locked.retry_after)))})
        if request.content_length is not None and request.content_length > 4096:
            return _bad_request("pairing request too large")
        try:
            body = json.loads(await request.content.read(4096))
            client_nonce = body["nonce"]
            bytes.fromhex(client_nonce)
        except (ValueError, KeyError, TypeError):
            return _bad_request('body must be JSON {"nonce": "<hex>"}')
        if not 32 <= len(client_nonce) <= 128:
            return _bad_request("nonce must be 16 to 64 random bytes, as hex")
        server_nonce = secrets.token_hex(16)
        token = server.auth.tokens.current() if server.auth.token_required else None
        proof = None
        if token:
            proof = pairing_proof(token, client_nonce, server_nonce, server.server_id,
                                  server.tls_fingerprint)
        return web.json_response({
            "server_id": server.server_id, "fingerprint": server.tls_fingerprint,
            "name": server.advertised_name, "token_required": server.auth.token_required,
            "nonce": server_nonce, "proof": proof})

    app.router.add_post(PAIR_PATH, pair)
