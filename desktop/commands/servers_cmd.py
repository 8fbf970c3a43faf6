"""`earshot servers`, `earshot pair`, `earshot unpair`: LAN servers from the command line.

`servers` lists what mDNS finds and what the app would make of each (this machine's,
paired, needs pairing, refused as an impostor, open). `pair URL|NAME|ID` verifies a server
with its token (`edge_server.lan.pairing`: the server proves it holds the token for the
certificate it presents; the token never travels) and pins it, storing the token in the
OS keyring, exactly as the app does; the app sees it at once. `resolve_server()` turns a
`--server` value (`auto`, a URL) into what a client needs: URL, token, pinned fingerprint.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from dataclasses import dataclass

from desktop.lan import trust
from desktop.lan.credentials import CredentialStore
from desktop.lan.discovery import DiscoveredServer, browse, mdns_interfaces
from desktop.lan.pairing import (
    PairingError,
    is_plain_remote,
    normalise_url,
    pair,
    probe,
    remember,
)
from desktop.lan.pins import PinStore, format_fingerprint
from desktop.lan.trust import url_token_key


@dataclass(frozen=True)
class ServerTarget:
    url: str
    token: str | None
    fingerprint: str | None
    name: str


def discover(timeout: float) -> list[DiscoveredServer]:
    return asyncio.run(browse(timeout=timeout, interfaces=mdns_interfaces()))


def resolve_server(server: str, token: str | None, fingerprint: str | None,
                   timeout: float = 2.0) -> ServerTarget:
    """`auto`: the best trusted server on the LAN (as the app's Automatic); else a URL,
    pinned and with its stored token when it was paired. Raises ValueError when none."""
    pins, credentials = PinStore(), CredentialStore()
    if server == "auto" and token:
        raise ValueError("--token names one server's token; with --server auto each paired "
                         "server's stored token is used")
    if server == "auto":
        usable, warnings = trust.automatic(discover(timeout), pins, credentials)
        for warning in warnings:
            print(f"earshot: warning: {warning}", file=sys.stderr)
        for candidate in usable:  # one that answers with its pinned certificate
            try:
                health = asyncio.run(probe(candidate.server.url, candidate.fingerprint))
            except PairingError as exc:
                print(f"earshot: warning: {exc}", file=sys.stderr)
                continue
            if health is not None:
                return ServerTarget(candidate.server.url, candidate.token,
                                    candidate.fingerprint, candidate.server.name)
        raise ValueError("no trusted server found on the LAN (pair with one first: "
                         "`earshot servers`, `earshot pair NAME`)")
    url = normalise_url(server)
    if is_plain_remote(url):
        if token:
            raise ValueError(f"{url} is plain http on another host: the token would cross the "
                             "network in clear; use https:// (servers serve it off the "
                             "loopback)")
        return ServerTarget(url, None, None, url)
    pin = pins.find_by_url(url)
    if fingerprint:
        from desktop.lan.pins import normalise_fingerprint

        fingerprint = normalise_fingerprint(fingerprint)
    elif pin is not None:
        fingerprint = pin.fingerprint
    if token is None:
        token = credentials.get(pin.server_id if pin else url_token_key(url))
    return ServerTarget(url, token, fingerprint, pin.name if pin else url)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("servers", help="list Earshot servers found on the LAN")
    p.add_argument("--timeout", type=float, default=2.0, help="seconds to listen (default 2)")
    p.set_defaults(func=run_servers)
    p = sub.add_parser("pair", help="pair with a server: verify it, pin it, keep its token")
    p.add_argument("server", help="https://host:port, host:port, or a discovered name or id")
    p.add_argument("--token", help="the server's token (default: ask; "
                   "`earshot-server token` on the server shows it)")
    p.add_argument("--timeout", type=float, default=2.0, help="seconds to listen for a name")
    p.set_defaults(func=run_pair)
    p = sub.add_parser("unpair", help="forget a paired server and its token")
    p.add_argument("server", help="server id or URL")
    p.set_defaults(func=run_unpair)


def run_servers(args: argparse.Namespace) -> int:
    pins, credentials = PinStore(), CredentialStore()
    found = discover(args.timeout)
    if not found:
        print("no Earshot server found on the LAN")
    for s in found:
        a = trust.assess(s, pins, credentials)
        fp = format_fingerprint(s.fingerprint)[:23] + "…" if s.fingerprint else "-"
        print(f"{s.name}\t{s.url}\t{s.device}\t{s.capacity} free\tid {s.server_id}\t"
              f"fingerprint {fp}\t{a.status}")
        if a.warning:
            print(f"earshot: warning: {a.warning}", file=sys.stderr)
    for pin in pins.all():
        if not any(s.server_id == pin.server_id for s in found):
            print(f"{pin.name}\t{pin.url}\t(paired, not seen now)\tid {pin.server_id}")
    return 0


def run_pair(args: argparse.Namespace) -> int:
    pins, credentials = PinStore(), CredentialStore()
    target = args.server
    expected_fp = expected_id = None
    if "://" not in target and ":" not in target:  # a name or an id: find it on the LAN
        matches = [s for s in discover(args.timeout) if target in (s.name, s.server_id)]
        if not matches:
            raise ValueError(f"no server named {target!r} found on the LAN")
        server = matches[0]
        target, expected_fp, expected_id = server.url, server.fingerprint, server.server_id
    token = args.token
    if token is None:
        token = getpass.getpass(f"token of {target} (empty if none): ").strip() or None
    try:
        verified = asyncio.run(pair(target, token, expected_fingerprint=expected_fp,
                                    expected_id=expected_id))
    except PairingError as exc:
        print(f"earshot: error: {exc}", file=sys.stderr)
        return 1
    remember(verified, token, pins, credentials)
    if token and not verified.fingerprint:
        credentials.set(url_token_key(verified.url), token)
    print(f"paired with {verified.name} ({verified.url}), id {verified.server_id}")
    if verified.fingerprint:
        print(f"fingerprint SHA256 {format_fingerprint(verified.fingerprint)}")
    if credentials.warning:
        print(f"earshot: warning: {credentials.warning}", file=sys.stderr)
    return 0


def run_unpair(args: argparse.Namespace) -> int:
    pins, credentials = PinStore(), CredentialStore()
    pin = pins.get(args.server) or pins.find_by_url(args.server)
    if pin is None:
        raise ValueError(f"not paired: {args.server}")
    pins.remove(pin.server_id)
    credentials.delete(pin.server_id)
    print(f"forgot {pin.name} ({pin.server_id})")
    return 0
