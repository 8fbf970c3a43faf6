"""Find Earshot servers on the LAN (mDNS `_earshot._tcp.local.`), for the desktop app.

`browse()` listens for `timeout` seconds and returns the servers seen, with their TXT data
(protocol, id, fp, models, device, capacity, token, tls, name; tls=1 gives an https URL).
What a record says is a claim, not proof: `desktop.lan.trust` decides which servers may
be used. `interfaces` pins zeroconf's sockets (tests: ["127.0.0.1"]); the default is every
interface. Run it on an asyncio loop (the app's network thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
from dataclasses import dataclass

import ifaddr
from zeroconf import IPVersion, ServiceStateChange
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from edge_server.lan.auth import is_loopback
from edge_server.lan.discovery import SERVICE_TYPE, zeroconf_interfaces


@dataclass(frozen=True)
class DiscoveredServer:
    service: str  # the mDNS instance name
    name: str
    url: str
    device: str
    capacity: int
    token_required: bool
    models: tuple[str, ...]
    protocol: int
    server_id: str
    fingerprint: str = ""  # advertised SHA-256 of its TLS certificate (lowercase hex)
    tls: bool = False
    address: str = ""
    auth: str = "remote"  # remote: loopback clients need no token | all | none

    @property
    def has_gpu(self) -> bool:
        return self.device == "cuda"

    @property
    def is_loopback(self) -> bool:
        return is_loopback(self.address)


def _parse(info: AsyncServiceInfo) -> DiscoveredServer | None:
    """A record as a server, or None when it is unusable (anyone can send garbage)."""
    props = {k.decode("utf-8", "replace"): (v or b"").decode("utf-8", "replace")
             for k, v in info.properties.items()}
    addresses = info.parsed_addresses(IPVersion.V4Only)
    if not addresses or info.port is None:
        return None
    address = reachable_address(addresses)
    try:
        return DiscoveredServer(
            service=info.name, name=props.get("name") or info.name.split(".")[0],
            url=f"{'https' if props.get('tls') == '1' else 'http'}://{address}:{info.port}",
            device=props.get("device", "cpu"),
            capacity=int(props.get("capacity", "0")),
            token_required=props.get("token") == "required",
            models=tuple(m for m in props.get("models", "").split(",") if m),
            protocol=int(props.get("protocol", "0")), server_id=props.get("id", ""),
            fingerprint=props.get("fp", "").lower(), tls=props.get("tls") == "1",
            address=address,
            auth=props.get("auth") or ("remote" if props.get("token") == "required" else "none"))
    except ValueError:
        return None  # a malformed record is not a server we can use


def reachable_address(addresses: list[str]) -> str:
    """Of a record's addresses, one on a network this machine is on (a box advertises its
    VPN and container addresses too), else the first."""
    try:
        networks = [ipaddress.ip_network(f"{ip.ip}/{ip.network_prefix}", strict=False)
                    for adapter in ifaddr.get_adapters() for ip in adapter.ips
                    if isinstance(ip.ip, str)]
    except Exception:  # listing interfaces is a nicety here
        return addresses[0]
    for address in addresses:
        with contextlib.suppress(ValueError):
            if any(ipaddress.ip_address(address) in net for net in networks):
                return address
    return addresses[0]


def mdns_interfaces() -> list[str] | None:
    """EARSHOT_MDNS_INTERFACES (comma-separated addresses) pins discovery; unset: all."""
    value = os.environ.get("EARSHOT_MDNS_INTERFACES", "")
    return [v.strip() for v in value.split(",") if v.strip()] or None


async def browse(timeout: float = 2.0,
                 interfaces: list[str] | None = None) -> list[DiscoveredServer]:
    """Servers announcing themselves within `timeout` seconds, GPU and free ones first."""
    zc = AsyncZeroconf(interfaces=zeroconf_interfaces(interfaces), ip_version=IPVersion.V4Only)
    names: set[str] = set()

    def on_change(zeroconf, service_type: str, name: str, state_change: ServiceStateChange):
        if state_change in (ServiceStateChange.Added, ServiceStateChange.Updated):
            names.add(name)
        else:
            names.discard(name)

    browser = AsyncServiceBrowser(zc.zeroconf, [SERVICE_TYPE], handlers=[on_change])
    try:
        await asyncio.sleep(timeout)
        found = []
        for name in sorted(names):
            info = AsyncServiceInfo(SERVICE_TYPE, name)
            if await info.async_request(zc.zeroconf, 1000) and (server := _parse(info)):
                found.append(server)
    finally:
        await browser.async_cancel()
        await zc.async_close()
    found.sort(key=lambda s: (not s.has_gpu, -s.capacity, s.name))
    return found


def local_host_name() -> str:
    return socket.gethostname().split(".")[0]
