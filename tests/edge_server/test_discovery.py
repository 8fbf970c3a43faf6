"""mDNS on 127.0.0.1: a plain zeroconf browser finds the server with its TXT data quickly,
and loses it when the server stops."""

from __future__ import annotations

import asyncio
import threading
import time

from zeroconf import IPVersion, ServiceBrowser, ServiceStateChange, Zeroconf

from desktop.discovery import browse
from edge_server.discovery import SERVICE_TYPE
from tests.server_harness import start_server


def test_advertised_on_loopback_found_within_2s_and_withdrawn_on_stop():
    server = start_server("--noop-engine", "--mdns-interfaces", "127.0.0.1", "--name", "office",
                          "--token", "t0k", "--max-sessions", "7")
    zc = Zeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    added, removed = threading.Event(), threading.Event()
    names: list[str] = []

    def on_change(zeroconf, service_type, name, state_change):
        if state_change is ServiceStateChange.Added:
            names.append(name)
            added.set()
        elif state_change is ServiceStateChange.Removed:
            removed.set()

    try:
        started = time.monotonic()
        browser = ServiceBrowser(zc, SERVICE_TYPE, handlers=[on_change])
        assert added.wait(2.0), "not found within 2 s"
        found_after = time.monotonic() - started
        info = zc.get_service_info(SERVICE_TYPE, names[0], timeout=2000)
        props = {k.decode(): v.decode() for k, v in info.properties.items()}
        assert props["protocol"] == "1" and props["name"] == "office"
        assert props["models"] == "noop" and props["device"] == "cpu"
        assert props["token"] == "required" and props["capacity"] == "7"
        assert len(props["id"]) == 12
        assert info.port == int(server.url.rsplit(":", 1)[1])
        assert info.parsed_addresses() == ["127.0.0.1"]

        found = asyncio.run(browse(timeout=1.0, interfaces=["127.0.0.1"]))
        assert [(s.name, s.url, s.token_required, s.capacity) for s in found] == [
            ("office", server.url, True, 7)]

        assert server.stop() == 0
        assert removed.wait(5.0), "still advertised after shutdown"
        assert found_after < 2.0
        browser.cancel()
    finally:
        server.stop()
        zc.close()
