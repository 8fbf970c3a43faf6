"""Who is really on the other end of an HTTP request: the TCP peer, or a trusted proxy's client.

A reverse proxy on the box (nginx, Caddy) connects from 127.0.0.1, so the TCP peer alone
would make every client behind it look local. Rules (`client_address`):
- No forwarding header (`Forwarded`, `X-Forwarded-For`, `X-Real-IP`, `X-Forwarded-Host`,
  `X-Forwarded-Proto`): a direct connection; the peer is the client (`verified`).
- Forwarding headers from a peer outside `trusted_proxies`: never believed for the address
  (the peer's own address is used), but the request is not `verified`: no loopback exemption.
- From a trusted proxy: the client is the right-most `X-Forwarded-For` address that is not
  itself a trusted proxy (the left-most when all are); `Forwarded: for=` (RFC 7239) likewise;
  `X-Real-IP` only when neither is present (alongside them it must name the same client
  or a trusted proxy). Headers that disagree, a header that cannot be read, or no address
  header at all: the client is `unknown`, never loopback.
Pure functions; `parse_networks` once at startup, `client_address` per request.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
FORWARDING_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip", "x-forwarded-host",
                      "x-forwarded-proto")
UNKNOWN = "unknown"
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_PAIR = re.compile(rf'\s*({_TOKEN})\s*=\s*({_TOKEN}|"(?:[^"\\]|\\.)*")\s*([;,]|$)')


def peer_ip(address: str | None) -> IP | None:
    """An address parsed (IPv4-mapped IPv6 as IPv4, zone dropped); None if unparsable."""
    if not address:
        return None
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def parse_networks(items: Iterable[str]) -> tuple[Network, ...]:
    """Networks ("10.0.0.0/8", "127.0.0.1", "::1"); raises ValueError for a malformed one."""
    return tuple(ipaddress.ip_network(item.strip(), strict=False) for item in items)


@dataclass(frozen=True)
class ClientAddress:
    address: str  # the client, for lockout, per-address limits and logs ("unknown" possible)
    peer: str  # the TCP peer (the proxy, when there is one)
    verified: bool  # `address` is the client's own: a direct connection or a trusted proxy's word

    def __str__(self) -> str:
        return self.address if self.address == self.peer else f"{self.address} via {self.peer}"


def _in(ip: IP | None, networks: tuple[Network, ...]) -> bool:
    return ip is not None and any(ip in net for net in networks)


def _node(text: str) -> IP | None:
    """One hop's address: `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]:80`, quoted."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1].strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not (rest[0] == ":" and rest[1:].isdigit())):
            return None
        ip = peer_ip(host)
        return ip if isinstance(ip, ipaddress.IPv6Address) else None
    if (ip := peer_ip(text)) is not None:
        return ip
    host, sep, port = text.partition(":")
    if sep and port.isdigit() and isinstance(ip := peer_ip(host), ipaddress.IPv4Address):
        return ip
    return None


def _forwarded_for(value: str) -> list[str | None]:
    """The `for=` of each element of an RFC 7239 header (None: element without one)."""
    elements: list[str | None] = []
    current: str | None = None
    pos = 0
    while pos < len(value):
        m = _PAIR.match(value, pos)
        if m is None:
            raise ValueError(f"unreadable Forwarded header near {value[pos:pos + 20]!r}")
        name, raw, sep = m.groups()
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        if name.lower() == "for":
            current = raw
        if sep != ";":
            elements.append(current)
            current = None
        pos = m.end()
    if not elements:
        raise ValueError("empty Forwarded header")
    return elements


def _pick(chain: list[str | None], trusted: tuple[Network, ...]) -> IP | None:
    """The right-most hop that is not a trusted proxy (the left-most if all are); None when an
    unreadable hop comes first."""
    ip: IP | None = None
    for hop in reversed(chain):
        ip = _node(hop) if hop is not None else None
        if ip is None or not _in(ip, trusted):
            return ip
    return ip


def client_address(peer: str | None, headers: Mapping[str, str],
                   trusted_proxies: tuple[Network, ...] = ()) -> ClientAddress:
    """Who sent a request that arrived from `peer` with `headers` (see the module doc)."""
    peer_text = peer or "?"
    found: dict[str, str] = {}
    for name, value in headers.items():  # case-insensitive; repeated headers joined
        key = name.lower()
        if key in FORWARDING_HEADERS:
            found[key] = f"{found[key]},{value}" if key in found else value
    if not found:
        return ClientAddress(peer_text, peer_text, True)
    peer_addr = peer_ip(peer)
    if not _in(peer_addr, trusted_proxies):
        return ClientAddress(peer_text, peer_text, False)
    candidates: list[IP | None] = []
    if "x-forwarded-for" in found:
        candidates.append(_pick(found["x-forwarded-for"].split(","), trusted_proxies))
    if "forwarded" in found:
        try:
            candidates.append(_pick(_forwarded_for(found["forwarded"]), trusted_proxies))
        except ValueError:
            candidates.append(None)
    real = _node(found["x-real-ip"]) if "x-real-ip" in found else None
    if not candidates and "x-real-ip" in found:
        candidates.append(real)
    elif "x-real-ip" in found and real not in candidates and not _in(real, trusted_proxies):
        candidates.append(None)  # e.g. the proxy set X-Real-IP and passed a client's XFF on
    if not candidates or None in candidates or len(set(candidates)) > 1:
        return ClientAddress(UNKNOWN, peer_text, False)
    return ClientAddress(str(candidates[0]), peer_text, True)
