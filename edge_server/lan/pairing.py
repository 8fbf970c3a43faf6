"""Pairing: the server proves it knows the token, bound to the certificate it presents.

`POST /api/pair` with `{"nonce": <16..64 random bytes as hex>}` answers
`{"server_id", "fingerprint", "name", "token_required", "nonce": <server nonce>,
"proof": HMAC-SHA256(token, pairing_message(...))}` (`proof` is null when the server
needs no token). The client computes the same HMAC with the token its user typed and the
fingerprint of the certificate it saw in the TLS handshake: a match proves this is the
server that holds the token (an impostor presents another certificate, and cannot compute
the proof for it without the token), so the client pins id + fingerprint and only then
sends the token. The token itself never travels during pairing. Open without a token;
subject to the failed-attempt lockout like every door. Event loop only.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from edge_server.app import EdgeServer

PAIR_PATH = "/api/pair"
PAIRING_VERSION = "earshot-pair-v1"


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


def add_pairing_routes(app: web.Application, server: EdgeServer) -> None:
    async def pair(request: web.Request) -> web.Response:
        client = server.auth.client(request.remote, request.headers)
        if (locked := server.auth.lockout(client.address)) is not None:
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
