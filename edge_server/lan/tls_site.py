"""One port for https/wss and (from this machine only) plain http/ws.

`LanSite` is an aiohttp site for a server bound beyond the loopback. It peeks at the first
byte of each connection: 0x16 opens a TLS handshake, served with the server's certificate;
anything else is plain HTTP, accepted only from a loopback peer (local tools, a reverse
proxy on the box) unless `allow_plain_remote` (the admin's logged opt-out). A plain
request from another host gets `403` with a JSON body `{"error": {"code": "tls_required",
...}}` naming the https URL, and the connection is closed. A connection that sends nothing
within `first_byte_timeout` seconds is closed (slow-loris); a refused request is read for
at most `REFUSAL_READ_S` in all; at most `MAX_UNDECIDED` connections are routed at once
(more are closed straight away). Needs a selector event loop
(Linux/macOS: the default); runs on the server's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import ssl

from aiohttp import web
from aiohttp.web_runner import BaseSite

from edge_server.background import spawn
from edge_server.lan.auth import is_loopback

log = logging.getLogger(__name__)
TLS_HANDSHAKE = 0x16
REFUSAL_READ_S = 3.0  # most time spent reading a plain request before refusing it
MAX_UNDECIDED = 512  # connections still in their first byte / TLS handshake / refusal


class _Listener:
    """What aiohttp's runner expects of a site's server: `sockets` and `close()`."""

    def __init__(self, sock: socket.socket, task: asyncio.Task) -> None:
        self.sockets = [sock]
        self._task = task

    def close(self) -> None:
        self._task.cancel()
        for sock in self.sockets:
            sock.close()


def tls_required_response(https_hint: str) -> bytes:
    body = json.dumps({"error": {
        "message": "this server accepts plain http/ws only from its own machine; "
                   f"connect with TLS: {https_hint}",
        "type": "invalid_request_error", "param": None, "code": "tls_required"}}).encode()
    head = ("HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    return head + body


class LanSite(BaseSite):
    def __init__(self, runner: web.BaseRunner, host: str, port: int,
                 ssl_context: ssl.SSLContext, *, allow_plain_remote: bool = False,
                 first_byte_timeout: float = 10.0, backlog: int = 128) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self._host = host
        self._port = port
        self._allow_plain_remote = allow_plain_remote
        self._first_byte_timeout = first_byte_timeout
        self._routing: set[asyncio.Task] = set()
        self._routing_slots = asyncio.Semaphore(MAX_UNDECIDED)
        self.port = port

    @property
    def name(self) -> str:
        return f"https://{self._host}:{self.port}"

    async def start(self) -> None:
        await super().start()
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.create_server(
            (self._host, self._port), family=family, backlog=self._backlog,
            dualstack_ipv6=family == socket.AF_INET6 and socket.has_dualstack_ipv6())
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        task = spawn(self._accept_forever(sock), "lan-site-accept")
        self._server = _Listener(sock, task)  # type: ignore[assignment]

    async def stop(self) -> None:
        await super().stop()
        for task in list(self._routing):
            task.cancel()

    async def _accept_forever(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, addr = await loop.sock_accept(sock)
            except OSError as exc:  # EMFILE and friends: back off instead of spinning
                log.warning("accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            task = loop.create_task(self._route(conn, addr[0]))
            self._routing.add(task)
            task.add_done_callback(self._routing.discard)

    async def _route(self, conn: socket.socket, peer: str) -> None:
        """Hand the connection to aiohttp (TLS or plain) or refuse it; the socket is closed
        here on every path that does not reach aiohttp (errors, cancellation included)."""
        loop = asyncio.get_running_loop()
        handed_over = False
        try:
            if self._routing_slots.locked():  # too many undecided connections: shed
                return
            async with self._routing_slots:
                conn.setblocking(False)
                try:
                    first = await asyncio.wait_for(self._peek(conn), self._first_byte_timeout)
                except (TimeoutError, OSError):
                    return
                if not first:
                    return
                tls = first[0] == TLS_HANDSHAKE
                if not tls and not self._allow_plain_remote and not is_loopback(peer):
                    await self._refuse_plain(conn, peer)
                    return
                try:
                    await loop.connect_accepted_socket(
                        self._runner.server, conn, ssl=self._ssl_context if tls else None,
                        ssl_handshake_timeout=self._first_byte_timeout if tls else None)
                    handed_over = True
                except (OSError, ssl.SSLError, TimeoutError) as exc:
                    log.debug("connection from %s failed before HTTP: %s", peer, exc)
        except Exception:  # never let one connection take the accept loop down
            log.exception("routing a connection from %s failed", peer)
        finally:
            if not handed_over:
                conn.close()

    @staticmethod
    async def _peek(conn: socket.socket) -> bytes:
        loop = asyncio.get_running_loop()
        readable = loop.create_future()
        fd = conn.fileno()
        loop.add_reader(fd, lambda: readable.done() or readable.set_result(None))
        try:
            await readable
        finally:
            loop.remove_reader(fd)
        return conn.recv(1, socket.MSG_PEEK)

    async def _refuse_plain(self, conn: socket.socket, peer: str) -> None:
        """Read the request head (bounded), answer 403 tls_required, close."""
        loop = asyncio.get_running_loop()
        log.info("plain http from %s refused: TLS is required off the loopback", peer)
        with contextlib.suppress(OSError, TimeoutError):
            head = b""
            async with asyncio.timeout(REFUSAL_READ_S):  # in all, however slowly it trickles
                while b"\r\n\r\n" not in head and len(head) < 16384:
                    chunk = await loop.sock_recv(conn, 4096)
                    if not chunk:
                        break
                    head += chunk
            host = self._host if self._host not in ("0.0.0.0", "::") else "THIS-SERVER"
            for line in head.split(b"\r\n")[1:]:
                if line.lower().startswith(b"host:"):
                    host = line[5:].strip().decode("latin-1").rsplit(":", 1)[0] or host
            await loop.sock_sendall(conn, tls_required_response(f"https://{host}:{self.port}"))
            conn.shutdown(socket.SHUT_WR)
