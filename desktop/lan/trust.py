"""Which discovered servers may be trusted with audio and a token, and how to reach them.

An mDNS record is a claim anyone on the LAN can make, so `assess()` believes it only as far
as the pins allow:
- a record whose id is paired but whose advertised fingerprint differs from the pin is an
  impostor (or a server whose identity was replaced): refused with a warning, and its token
  is never sent (`warning` is set);
- a server with `--auth none` is never chosen automatically (anyone could run one);
- a server on this machine (loopback address) may be used without pairing, with a token
  given for its address only (a record claiming a paired id is held to that pin, even on
  loopback);
- any other server must be paired, serve TLS, and have its token in the credential store;
  the connection then accepts only the pinned certificate.
`automatic()` ranks the usable ones: GPU first, then most free capacity. Pure functions
over the stores; safe on any thread (the stores lock their files).
"""

from __future__ import annotations

from dataclasses import dataclass

from desktop.lan.credentials import CredentialStore
from desktop.lan.discovery import DiscoveredServer
from desktop.lan.pins import PinStore, format_fingerprint
from edge_server.protocol import PROTOCOL_VERSION


def url_token_key(url: str) -> str:
    """Credential-store key of a token given for an address rather than a pinned server
    (this machine's servers, reached over plain http)."""
    return f"url {url.rstrip('/')}"


@dataclass(frozen=True)
class Assessment:
    server: DiscoveredServer
    usable: bool  # may be chosen automatically right now
    status: str  # local | paired | needs pairing | mismatch | open | no tls | full | incompatible
    token: str | None = None
    fingerprint: str | None = None  # pin to use for https
    warning: str | None = None  # shown to the user (an impostor, a changed identity)

    @property
    def needs_pairing(self) -> bool:
        return self.status == "needs pairing"


def assess(server: DiscoveredServer, pins: PinStore,
           credentials: CredentialStore) -> Assessment:
    pin = pins.get(server.server_id) if server.server_id else None
    if pin is not None and server.fingerprint != pin.fingerprint:
        return Assessment(server, False, "mismatch", warning=(
            f"Refused '{server.name}' at {server.address}: it claims to be a paired server "
            f"(id {server.server_id}) but advertises certificate "
            f"{format_fingerprint(server.fingerprint)[:23] if server.fingerprint else '(none)'}"
            f"… instead of the paired {format_fingerprint(pin.fingerprint)[:23]}…. "
            "Nothing was sent to it. If its identity was replaced on purpose, pair again."))
    if server.protocol != PROTOCOL_VERSION:
        return Assessment(server, False, "incompatible")
    if server.auth == "none" or not server.token_required:
        return Assessment(server, False, "open")
    if server.is_loopback and pin is None:  # this machine's, never paired: no pin to hold
        token = credentials.get(url_token_key(server.url))  # never a paired server's token
        fingerprint = server.fingerprint if server.tls else None
        usable = server.auth == "remote" or token is not None
        return Assessment(server, usable and server.capacity > 0,
                          "local" if usable else "needs pairing", token, fingerprint)
    token = credentials.get(server.server_id) if server.server_id else None
    if pin is None or token is None:
        return Assessment(server, False, "needs pairing")
    if not server.tls:
        return Assessment(server, False, "no tls", warning=(
            f"'{server.name}' is paired but now serves plain http: refused (the token would "
            "cross the network in clear)."))
    if server.capacity <= 0:
        return Assessment(server, False, "full", token, pin.fingerprint)
    return Assessment(server, True, "paired", token, pin.fingerprint)


def automatic(servers: list[DiscoveredServer], pins: PinStore,
              credentials: CredentialStore) -> tuple[list[Assessment], list[str]]:
    """(usable servers, best first; warnings about refused records)."""
    assessments = [assess(s, pins, credentials) for s in servers]
    usable = [a for a in assessments if a.usable]
    usable.sort(key=lambda a: (not a.server.has_gpu, -a.server.capacity, a.server.name))
    return usable, [a.warning for a in assessments if a.warning]
