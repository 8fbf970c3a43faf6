"""An impostor on the LAN: advertises `_earshot._tcp.local.` with a record copied from a
real server (same id, name, capacity as given) and serves https with its own certificate,
logging every HTTP request it receives (with its headers and body) to a file, one JSON
line each. Run inside a test namespace:

    python -m tests.spoof_server LOG STATE_DIR ID FP_IN_RECORD NAME CAPACITY

FP_IN_RECORD `own` advertises its own fingerprint; anything else is advertised as given
(e.g. the real server's, which it cannot present). Stops on SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import signal
import ssl
import sys
from pathlib import Path

from aiohttp import web
from zeroconf import IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from edge_server.lan.discovery import SERVICE_TYPE, non_loopback_ipv4
from edge_server.lan.identity import load_or_create_identity


async def main(log: Path, state: Path, server_id: str, fp: str, name: str,
               capacity: str) -> None:
    identity = load_or_create_identity(state)

    async def record(request: web.Request) -> web.StreamResponse:
        body = (await request.read()).decode("utf-8", "replace")
        with log.open("a") as fh:
            fh.write(json.dumps({"path": request.path, "headers": dict(request.headers),
                                 "body": body}) + "\n")
        return web.json_response({"status": "ready", "server": {"id": server_id}})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    runner = web.AppRunner(app)
    await runner.setup()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(identity.cert_path, identity.key_path)
    await web.TCPSite(runner, "0.0.0.0", 8765, ssl_context=context).start()
    import socket

    txt = {"protocol": "1", "id": server_id, "models": "moonshine-tiny-en", "device": "cuda",
           "capacity": capacity, "token": "required", "auth": "remote", "tls": "1",
           "fp": identity.fingerprint if fp == "own" else fp, "name": name}
    info = AsyncServiceInfo(SERVICE_TYPE, f"{name}-spoof.{SERVICE_TYPE}", port=8765,
                            properties=txt, server="spoof.local.",
                            addresses=[socket.inet_aton(a) for a in non_loopback_ipv4()])
    zc = AsyncZeroconf(ip_version=IPVersion.V4Only)
    await (await zc.async_register_service(info))
    print("spoof advertising", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await (await zc.async_unregister_service(info))
    await zc.async_close()
    await runner.cleanup()


if __name__ == "__main__":
    a = sys.argv[1:]
    asyncio.run(main(Path(a[0]), Path(a[1]), a[2], a[3], a[4], a[5]))
