"""The load generator's own floor for a herd: how long N clients of this process take to
be refused (same client code and shared sessions as the herd) by a responder that
answers every upgrade with HTTP 503 at once (a bare
aiohttp app in a child process on 127.0.0.1, no Earshot code). A herd's refusal times
can be no better than this on the same machine; when it is near the bound, the client
machine, not the server, decides the verdict. Blocking; runs its own asyncio loop.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

import numpy as np

from loadtest.client import run_stream, shared_sessions
from loadtest.speech import Script

RESPONDER = """
import socket, sys
from aiohttp import web
async def refuse(request):
    return web.json_response({"error": {"code": "overloaded", "message": "floor"}},
                             status=503, headers={"Retry-After": "5"})
app = web.Application()
app.router.add_get("/v1/stream", refuse)
sock = socket.socket()
sock.bind(("127.0.0.1", 0))
print(sock.getsockname()[1], flush=True)
web.run_app(app, sock=sock, print=None, backlog=4096)
"""


def refusal_floor(n: int, sources: list[str] | None = None) -> dict:
    """{"p50", "p95", "max"} seconds from connect to refusal for `n` clients at once."""
    proc = subprocess.Popen([sys.executable, "-c", RESPONDER], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        url = f"http://127.0.0.1:{port}"
        empty = Script(np.zeros(0, np.float32), ())

        async def herd() -> list:
            sessions = shared_sessions(sources)
            try:
                return await asyncio.gather(*(
                    run_stream(url, empty, http=sessions[k % len(sessions)])
                    for k in range(n)))
            finally:
                for session in sessions:
                    await session.close()

        times = [o.refused_s for o in asyncio.run(herd()) if o.refused_s is not None]
    finally:
        proc.kill()
        proc.wait()
    if not times:
        return {"p50": None, "p95": None, "max": None}
    return {"p50": round(float(np.percentile(times, 50)), 3),
            "p95": round(float(np.percentile(times, 95)), 3), "max": round(max(times), 3)}
