"""A server that accepts TCP connections and reads, but never answers a WebSocket handshake.

What a hung box looks like to a client: the port is open, nothing comes back. With
`healthy`, `GET /healthz` is answered "ready" (so the app's probe passes and it goes on to
open the stream, which hangs). It runs its own asyncio loop on a daemon thread, so it works
under `asyncio.run` and under Qt alike. `open_connections` counts connections the client
has not closed yet (what a cancelled start must leave at 0).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading


class SilentServer:
    def __init__(self, healthy: bool = True) -> None:
        self.healthy = healthy
        self.accepted = 0
        self.open_connections = 0
        self.handshakes = 0  # requests other than /healthz (left unanswered)
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="silent-server")

    def __enter__(self) -> SilentServer:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0), self._loop).result(5)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()
            for task in asyncio.all_tasks() - {asyncio.current_task()}:
                task.cancel()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open_connections += 1
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            if self.healthy and head.startswith(b"GET /healthz"):
                body = json.dumps({"status": "ready", "protocol": 1,
                                   "server": {"device": "cpu"}}).encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
                             + body)
                await writer.drain()
                return
            self.handshakes += 1
            while await reader.read(4096):  # read on, never reply, until the client hangs up
                pass
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            self.open_connections -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
