"""The WebSocket transport of the streaming protocol (one coroutine per connection).

Admission happens before the upgrade (HTTP 503 + Retry-After when full, 429 when one
address holds too many connections). After the upgrade: `hello` within the handshake
timeout, then frames and `end` until the client leaves or the session has `ended`.
Outgoing messages go through `WsConnection`, a queue drained by a writer task, so a
session never waits on a slow client's socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from typing import TYPE_CHECKING

from aiohttp import WSMsgType, web

from edge_server.protocol import (
    PROTOCOL_VERSION,
    ErrorCode,
    Hello,
    ProtocolError,
    decode_frame,
    error_message,
    parse_hello,
    parse_json,
)

if TYPE_CHECKING:
    from edge_server.app import EdgeServer
    from edge_server.lan.client_address import ClientAddress
    from edge_server.sessions import Session

log = logging.getLogger(__name__)
ACK_INTERVAL_S = 0.2
MAX_MESSAGE_BYTES = 4 << 20
_CLOSE = object()
SERVER_KEY: web.AppKey = web.AppKey("earshot_server", object)


class WsConnection:
    """Outgoing half of one client WebSocket."""

    def __init__(self, ws: web.WebSocketResponse, peer: str) -> None:
        self.ws = ws
        self.peer = peer
        self.queue: asyncio.Queue = asyncio.Queue()
        self.closing = False
        self.writer = asyncio.get_running_loop().create_task(self._write())

    def send(self, message: dict) -> None:
        if not self.closing:
            self.queue.put_nowait(json.dumps(message, separators=(",", ":")))

    def close(self, code: int, reason: str = "") -> None:
        if not self.closing:
            self.closing = True
            self.queue.put_nowait((_CLOSE, code, reason))

    async def _write(self) -> None:
        try:
            while True:
                item = await self.queue.get()
                if isinstance(item, tuple) and item[0] is _CLOSE:
                    reason = item[2].encode()[:120].decode("utf-8", "ignore").encode()
                    await self.ws.close(code=item[1], message=reason)
                    return
                await self.ws.send_str(item)
        except (ConnectionError, RuntimeError):
            return


def _refuse(status: int, code: ErrorCode, message: str, retry_after: int) -> web.Response:
    return web.json_response({"error": {"code": str(code), "message": message}}, status=status,
                             headers={"Retry-After": str(retry_after)})


async def stream_handler(request: web.Request) -> web.StreamResponse:
    server: EdgeServer = request.app[SERVER_KEY]
    settings = server.settings
    client = server.auth.client(request.remote, request.headers)
    peer = client.address  # behind a trusted proxy: its client (lockout, per-address limit)
    if (locked := server.auth.lockout(peer)) is not None:
        server.stats["auth_lockouts"] += 1
        return _refuse(429, ErrorCode.RATE_LIMITED, locked.reason, math.ceil(locked.retry_after))
    resuming = request.query.get("session")
    bypass = resuming if resuming and server.registry.get(resuming) else None
    if bypass is None:
        reason = server.admission_refusal()
        if reason is not None:
            server.stats["sessions_rejected"] += 1
            return _refuse(503, ErrorCode.OVERLOADED, reason, settings.retry_after_s)
    if server.connections_per_ip.get(peer, 0) >= settings.max_connections_per_ip:
        server.stats["sessions_rejected"] += 1
        return _refuse(429, ErrorCode.RATE_LIMITED, "too many connections from this address",
                       settings.retry_after_s)
    # frames up to 4 MiB get a structured `frame_too_large`; beyond that aiohttp closes (1009)
    ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=MAX_MESSAGE_BYTES)
    await ws.prepare(request)
    server.connections_per_ip[peer] = server.connections_per_ip.get(peer, 0) + 1
    conn = WsConnection(ws, str(client))
    session: Session | None = None
    try:
        hello = await _receive_hello(ws, settings.handshake_timeout_s)
        if bypass is not None and (not hello.resume or hello.session != bypass):
            raise ProtocolError(ErrorCode.OVERLOADED,
                                "the ?session= query must name the session being resumed")
        session = _open_session(server, hello, conn, client)
        await _serve(server, session, conn, ws, hello)
    except ProtocolError as exc:
        log.info("closing %s: %s (%s)", client, exc.message, exc.code)
        server.stats["protocol_errors"] += 1
        conn.send(error_message(exc.code, exc.message))
        conn.close(exc.close_code, exc.message)
        if session is not None and exc.code != ErrorCode.SESSION_REPLACED:
            session.detach(conn)
            server.registry.discard(session)  # a broken stream is not resumable
            session = None
    except Exception:
        log.exception("internal error on a stream from %s", client)
        conn.send(error_message(ErrorCode.INTERNAL, "internal server error"))
        conn.close(4500, "internal error")
    finally:
        if session is not None:
            session.detach(conn)
        server.connections_per_ip[peer] -= 1
        if not server.connections_per_ip[peer]:
            del server.connections_per_ip[peer]
        conn.close(1000)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.writer, 5)
    return ws


async def _receive_hello(ws: web.WebSocketResponse, timeout: float) -> Hello:
    try:
        msg = await ws.receive(timeout=timeout)
    except TimeoutError:
        raise ProtocolError(ErrorCode.HANDSHAKE_TIMEOUT,
                            f"no hello within {timeout:g} s") from None
    if msg.type != WSMsgType.TEXT:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "the first message must be a text 'hello'")
    return parse_hello(parse_json(msg.data))


def _open_session(server: EdgeServer, hello: Hello, conn: WsConnection,
                  client: ClientAddress) -> Session:
    decision = server.auth.check(client.address, hello.token, verified=client.verified)
    if not decision.allowed:
        server.stats["auth_failures"] += 1
        code = ErrorCode.RATE_LIMITED if decision.locked_out else ErrorCode.UNAUTHORIZED
        raise ProtocolError(code, decision.reason)
    session = server.registry.get(hello.session)
    if hello.resume:
        if session is None:
            raise ProtocolError(ErrorCode.SESSION_UNKNOWN,
                                f"session {hello.session!r} is unknown or expired; start a new one")
        if session.token != hello.token or session.sample_rate != hello.sample_rate:
            raise ProtocolError(ErrorCode.UNAUTHORIZED, "resume does not match the session")
        server.stats["sessions_resumed"] += 1
    else:
        if session is not None:
            raise ProtocolError(ErrorCode.BAD_MESSAGE,
                                "session id already in use; send resume=true to continue it")
        session = server.registry.create(hello.session, hello.token, hello.sample_rate,
                                         hello.partials)
        server.stats["sessions_started"] += 1
    conn.send({"type": "ready", "protocol": PROTOCOL_VERSION, "session": session.id,
               "resumed": hello.resume, "next_seq": session.next_seq,
               "server": server.describe(),
               "partial_interval_ms": server.settings.partial_interval_ms})
    session.attach(conn, hello.last_final)
    return session


async def _serve(server: EdgeServer, session: Session, conn: WsConnection,
                 ws: web.WebSocketResponse, hello: Hello) -> None:
    settings = server.settings
    max_payload = settings.max_frame_ms * hello.sample_rate // 1000 * 2
    last_ack = 0.0
    acked = session.next_seq - 1
    last_message = time.monotonic()
    while not session.ended and not conn.closing:
        # our own deadline: aiohttp's receive timeout restarts on heartbeat pongs
        remaining = settings.idle_timeout_s - (time.monotonic() - last_message)
        try:
            msg = await asyncio.wait_for(ws.receive(), max(remaining, 0.001))
        except TimeoutError:
            raise ProtocolError(ErrorCode.IDLE_TIMEOUT,
                                f"nothing received for {settings.idle_timeout_s:g} s") from None
        last_message = time.monotonic()
        if msg.type == WSMsgType.BINARY:
            seq, pcm = decode_frame(msg.data, max_payload)
            async with session.lock:
                if await session.ingest(seq, pcm):
                    server.stats["frames"] += 1
                else:
                    server.stats["duplicate_frames"] += 1
            await session.wait_finals_below(settings.max_pending_finals)
            now = time.monotonic()
            if session.next_seq - 1 > acked and now - last_ack >= ACK_INTERVAL_S:
                acked, last_ack = session.next_seq - 1, now
                conn.send({"type": "ack", "seq": acked})
        elif msg.type == WSMsgType.TEXT:
            body = parse_json(msg.data)
            if body["type"] == "end":
                if session.next_seq - 1 > acked:
                    acked = session.next_seq - 1
                    conn.send({"type": "ack", "seq": acked})
                async with session.lock:
                    await session.end()
            elif body["type"] == "ping":
                conn.send({"type": "pong", "t": body.get("t")})
            else:
                raise ProtocolError(ErrorCode.BAD_MESSAGE, f"unknown message type {body['type']!r}")
        elif msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            return
    if session.ended:
        conn.close(1000, "ended")
