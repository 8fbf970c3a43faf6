"""mDNS/DNS-SD advertisement of an edge server as `_earshot._tcp.local.` (zeroconf).

TXT record: `protocol` (streaming protocol version), `id` (persistent server id), `fp`
(SHA-256 fingerprint of the TLS certificate it serves, empty without TLS), `tls` (1|0),
`models` (comma-separated model ids), `device` (cuda|cpu), `capacity` (free streams right
now), `token` (`required` or `none`), `auth` (remote|all|none: who needs it), `name`.
The capacity entry is refreshed as load changes, at most every `min_update_s`; the record
is withdrawn on `stop()`.
`addresses` are the IPv4 addresses put in the record (`advertised_addresses()` picks them
from the bind address); `interfaces` pins the sockets zeroconf uses (tests use
["127.0.0.1"]); None means every interface (zeroconf's `InterfaceChoice.All`).
`extra` lists further services to announce as (service type, instance name, port), with
no TXT record (the Wyoming server: `_wyoming._tcp.local.`, which Home Assistant discovers;
it keys a discovered box by the instance name, so that name should be stable across
restarts); they are withdrawn with the main record. Runs on the server's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable

import ifaddr
from zeroconf import InterfaceChoice, IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from edge_server.background import spawn
from edge_server.lan.auth import is_loopback

log = logging.getLogger(__name__)
SERVICE_TYPE = "_earshot._tcp.local."
WYOMING_SERVICE_TYPE = "_wyoming._tcp.local."


def zeroconf_interfaces(interfaces: list[str] | None) -> list[str] | InterfaceChoice:
    """What zeroconf's `interfaces=` wants: the pinned addresses, else every interface."""
    return list(interfaces) if interfaces else InterfaceChoice.All


def non_loopback_ipv4() -> list[str]:
    found = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and not ip.ip.startswith("127.") and ip.ip not in found:
                found.append(ip.ip)
    return found


def advertised_addresses(bind_host: str | None, interfaces: list[str] | None) -> list[str]:
    """IPv4 addresses other hosts can reach the server on; [] when there are none.

    Pinned mDNS interfaces are taken as given; a wildcard bind (0.0.0.0, ::, empty) is
    reachable on every non-loopback address; a loopback bind on none; a specific address
    on itself only.
    """
    if interfaces:
        return list(interfaces)
    host = (bind_host or "").strip("[]")
    if host in ("", "0.0.0.0", "::"):
        return non_loopback_ipv4()
    if host == "localhost" or is_loopback(host):
        return []
    try:
        socket.inet_aton(host)
    except OSError:  # a host name or an IPv6 address: announce every address
        return non_loopback_ipv4()
    return [host]


class Advertiser:
    def __init__(self, name: str, port: int, interfaces: list[str] | None,
                 txt: Callable[[], dict[str, str]], min_update_s: float = 2.0,
                 extra: list[tuple[str, str, int]] | None = None,
                 addresses: list[str] | None = None) -> None:
        self.name = name
        self.port = port
        self.interfaces = interfaces
        self.addresses = addresses or advertised_addresses("0.0.0.0", interfaces)
        self.txt = txt
        self.min_update_s = min_update_s
        self.extra = list(extra or [])  # (service type, instance name, port)
        self._extra_infos: list[AsyncServiceInfo] = []
        self._zc: AsyncZeroconf | None = None
        self._info: AsyncServiceInfo | None = None
        self._last: dict[str, str] = {}
        self._task: asyncio.Task | None = None

    def _service_info(self, properties: dict[str, str], service_type: str = SERVICE_TYPE,
                      name: str | None = None, port: int | None = None) -> AsyncServiceInfo:
        addresses = [socket.inet_aton(a) for a in self.addresses]
        host = socket.gethostname().split(".")[0] or "earshot"
        return AsyncServiceInfo(
            service_type, f"{name or self.name}.{service_type}", port=port or self.port,
            properties=properties, addresses=addresses, server=f"{host}.local.")

    async def start(self) -> None:
        self._zc = AsyncZeroconf(interfaces=zeroconf_interfaces(self.interfaces),
                                 ip_version=IPVersion.V4Only)
        self._last = self.txt()
        self._info = self._service_info(self._last)
        # each async_* call returns the broadcast task: await it too, so it really went out
        await (await self._zc.async_register_service(self._info, allow_name_change=True))
        for service_type, name, port in self.extra:
            info = self._service_info({}, service_type, name, port)
            await (await self._zc.async_register_service(info, allow_name_change=True))
            self._extra_infos.append(info)
        log.info("advertising %s on %s", ", ".join(
            i.name for i in (self._info, *self._extra_infos)),
            ", ".join(self.addresses))
        self._task = spawn(self._refresh(), "mdns-refresh")

    async def _refresh(self) -> None:
        last_update = time.monotonic()
        while True:
            await asyncio.sleep(0.5)
            current = self.txt()
            if current != self._last and time.monotonic() - last_update >= self.min_update_s:
                await self.update(current)
                last_update = time.monotonic()

    async def update(self, properties: dict[str, str]) -> None:
        if self._zc is None or self._info is None:
            return
        self._last = properties
        info = self._service_info(properties)
        info.name = self._info.name  # keep a name changed by a conflict
        self._info = info
        await (await self._zc.async_update_service(info))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._zc is not None:
            for info in (*self._extra_infos, self._info):
                with contextlib.suppress(Exception):
                    if info is not None:
                        await (await self._zc.async_unregister_service(info))
            self._extra_infos = []
            await self._zc.async_close()
            self._zc = None
