"""Pair with a server: learn its certificate, check it proves the token, pin it.

`pair(url, token)` connects over TLS, takes the SHA-256 fingerprint of the certificate the
server presents, and asks `POST /api/pair` (over a connection pinned to that fingerprint)
for an HMAC of the token over both sides' nonces, the server id and that fingerprint
(`edge_server.lan.pairing`). Only a server holding the token can answer for the
certificate it presents, so a match proves both; the token itself is never sent. With
`expected_fingerprint` (what mDNS advertised) a server presenting another certificate is
refused before anything is asked. `probe()` reads `/healthz` the same pinned way.
Coroutines: run them on the app's asyncio loop (or `asyncio.run` in the CLI).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import secrets
import ssl
import time
from dataclasses import dataclass

import aiohttp
from yarl import URL

from desktop.lan.credentials import CredentialStore
from desktop.lan.pins import PairedServer, PinStore
from edge_server.lan.auth import is_loopback
from edge_server.lan.pairing import PAIR_PATH, pairing_proof


@dataclass(frozen=True)
class VerifiedServer:
    """A server that proved it holds the token; `fingerprint` is "" over plain loopback."""

    server_id: str
    fingerprint: str
    name: str
    url: str


def remember(server: VerifiedServer, token: str | None, pins: PinStore,
             credentials: CredentialStore) -> None:
    """Pin the server (https only: loopback needs no pin) and keep its token."""
    if server.fingerprint:
        pins.add(PairedServer(server_id=server.server_id, fingerprint=server.fingerprint,
                              name=server.name, url=server.url, paired_at=time.time()))
    if token:
        credentials.set(server.server_id, token)


class PairingError(RuntimeError):
    """Pairing failed. `code`: unreachable | tls_required | identity_mismatch | wrong_token |
    token_required | bad_response."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def is_plain_remote(url: str) -> bool:
    """A plain http URL of another host: no token may travel to it."""
    parsed = URL(url)
    host = parsed.host or ""
    return parsed.scheme in ("http", "ws") and host != "localhost" and not is_loopback(host)


def normalise_url(address: str) -> str:
    """`host:port` or a URL -> a base URL; https unless the host is this machine."""
    address = address.strip().rstrip("/")
    if "://" not in address:
        host = address.rsplit(":", 1)[0].strip("[]")
        local = host == "localhost" or is_loopback(host)
        address = ("http://" if local else "https://") + address
    url = URL(address)
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"not a server address: {address!r} (want host:port or https://...)")
    return str(url.with_path("").with_query(None))


def pinned_ssl(fingerprint: str | None) -> aiohttp.Fingerprint | bool:
    """What aiohttp's `ssl=` needs to accept exactly the pinned certificate."""
    return aiohttp.Fingerprint(bytes.fromhex(fingerprint)) if fingerprint else True


async def presented_fingerprint(url: str, timeout: float = 5.0) -> str:
    """SHA-256 (hex) of the certificate a https server presents, unverified."""
    parsed = URL(url)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # we pin by fingerprint instead
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(parsed.host, parsed.port, ssl=context), timeout)
    except (OSError, ssl.SSLError, TimeoutError) as exc:
        raise PairingError("unreachable", f"cannot open TLS to {url}: {exc}") from None
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), 2.0)
    return hashlib.sha256(der).hexdigest()


async def pair(url: str, token: str | None, *, expected_fingerprint: str | None = None,
               expected_id: str | None = None, timeout: float = 10.0) -> VerifiedServer:
    """Verify the server at `url` and return what to pin (raises PairingError)."""
    url = normalise_url(url)
    host = URL(url).host or ""
    if URL(url).scheme == "https":
        fingerprint = await presented_fingerprint(url, timeout)
        if expected_fingerprint and fingerprint != expected_fingerprint.lower():
            raise PairingError("identity_mismatch",
                               f"{url} presents a certificate other than the one it "
                               "advertises; refused (the token was not sent)")
    elif host == "localhost" or is_loopback(host):
        fingerprint = ""
    else:
        raise PairingError("tls_required", f"{url}: pairing with another host needs https")
    nonce = secrets.token_hex(32)
    try:
        async with (aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http,
                    http.post(url + PAIR_PATH, json={"nonce": nonce},
                              ssl=pinned_ssl(fingerprint)) as resp):
            if resp.status == 404:
                raise PairingError("bad_response", f"{url} is not an Earshot server "
                                   "that supports pairing (HTTP 404)")
            if resp.status != 200:
                raise PairingError("bad_response", f"{url} refused pairing "
                                   f"(HTTP {resp.status}: {(await resp.text())[:200]})")
            data = await resp.json()
    except aiohttp.ServerFingerprintMismatch:
        raise PairingError("identity_mismatch", f"{url} changed certificate while pairing; "
                           "refused") from None
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
        raise PairingError("unreachable", f"cannot pair with {url}: {exc}") from None
    try:
        server_id, claimed = str(data["server_id"]), str(data["fingerprint"]).lower()
        server_nonce, proof = str(data["nonce"]), data.get("proof")
        token_required = bool(data["token_required"])
        name = str(data.get("name") or host)
    except (KeyError, TypeError) as exc:
        raise PairingError("bad_response", f"{url}: malformed pairing answer ({exc})") from None
    if claimed != fingerprint:
        raise PairingError("identity_mismatch", f"{url} says its certificate is {claimed[:16]}… "
                           f"but presented {fingerprint[:16]}… (a TLS proxy in between?)")
    if expected_id and server_id != expected_id:
        raise PairingError("identity_mismatch",
                           f"{url} has id {server_id}, not the advertised {expected_id}")
    if token_required and not token:
        raise PairingError("token_required", f"{name} needs its token "
                           "(`earshot-server token` on the server shows it)")
    if token:  # whatever the server says it needs: no proof, no token kept or sent
        expected = pairing_proof(token, nonce, server_nonce, server_id, fingerprint)
        if not isinstance(proof, str) or not hmac.compare_digest(proof, expected):
            raise PairingError("wrong_token", f"the token does not match {name}: check "
                               "`earshot-server token` on the server (or this is not the "
                               "server it claims to be)")
    return VerifiedServer(server_id, fingerprint, name, url)


async def probe(url: str, fingerprint: str | None = None, timeout: float = 1.5) -> dict | None:
    """The server's /healthz when it is ready (TLS pinned to `fingerprint`), else None.
    Raises PairingError("identity_mismatch") when it presents another certificate, and
    ("tls_required") when a pin is given for a plain http URL (it could not be checked)."""
    if fingerprint and URL(url).scheme != "https":
        raise PairingError("tls_required", f"{url} is plain http: a pinned server is only "
                           "reached over https")
    try:
        async with (aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http,
                    http.get(url.rstrip("/") + "/healthz", ssl=pinned_ssl(fingerprint)) as r):
            body = await r.json(content_type=None)
    except aiohttp.ServerFingerprintMismatch:
        raise PairingError("identity_mismatch", f"Refused {url}: it presents a certificate "
                           "other than the paired one (an impostor, or its identity was "
                           "replaced: pair again). Nothing was sent to it.") from None
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
        return None
    return body if isinstance(body, dict) and body.get("status") == "ready" else None
