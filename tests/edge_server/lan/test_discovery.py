"""mDNS on 127.0.0.1: a plain zeroconf browser finds the server with its TXT data quickly,
and loses it when the server stops."""

from __future__ import annotations

import asyncio
import time

from desktop.lan.discovery import browse
from edge_server.lan.discovery import SERVICE_TYPE
from tests.mdns_watch import MdnsWatch
from tests.server_harness import start_server


def test_advertised_on_loopback_found_within_2s_and_withdrawn_on_stop():
    server = start_server("--noop-engine", "--mdns-interfaces", "127.0.0.1", "--name", "office",
                          "--token", "t0k", "--max-sessions", "7",
                          "--model", "moonshine-tiny-en,moonshine-base-en")
    watch = MdnsWatch(SERVICE_TYPE)
    try:
        started = time.monotonic()
        watch.start()
        assert watch.added.wait(2.0), "not found within 2 s"
        found_after = time.monotonic() - started
        info = watch.info(watch.names[0])
        props = {k.decode(): v.decode() for k, v in info.properties.items()}
        assert props["protocol"] == "1" and props["name"] == "office"
        assert props["models"] == "moonshine-tiny-en,moonshine-base-en"  # the default first
        assert props["device"] == "cpu"
        assert props["token"] == "required" and props["capacity"] == "7"
        assert props["auth"] == "remote"
        assert len(props["id"]) == 16 and props["tls"] == "0" and props["fp"] == ""
        assert info.port == int(server.url.rsplit(":", 1)[1])
        assert info.parsed_addresses() == ["127.0.0.1"]

        found = asyncio.run(browse(timeout=1.0, interfaces=["127.0.0.1"]))
        assert [(s.name, s.url, s.token_required, s.capacity, s.models) for s in found] == [
            ("office", server.url, True, 7, ("moonshine-tiny-en", "moonshine-base-en"))]

        assert server.stop() == 0
        assert watch.removed.wait(5.0), "still advertised after shutdown"
        assert found_after < 2.0
    finally:
        server.stop()
        watch.close()


def test_a_garbled_record_is_skipped_not_fatal():
    from zeroconf.asyncio import AsyncServiceInfo

    from desktop.lan.discovery import _parse

    info = AsyncServiceInfo(SERVICE_TYPE, f"x.{SERVICE_TYPE}", port=8765,
                            addresses=[bytes([127, 0, 0, 1])],
                            properties={b"id": b"\xff\xfe", b"capacity": b"\xff", b"tls": b"1"})
    assert _parse(info) is None  # capacity is no number: unusable, and nothing raised
    info = AsyncServiceInfo(SERVICE_TYPE, f"y.{SERVICE_TYPE}", port=8765,
                            addresses=[bytes([127, 0, 0, 1])],
                            properties={b"name": b"caf\xe9", b"capacity": b"3"})
    server = _parse(info)
    assert server is not None and server.capacity == 3 and server.name.startswith("caf")
