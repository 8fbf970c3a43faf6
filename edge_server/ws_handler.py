"""The WebSocket transport of the streaming protocol (one coroutine per connection).

Admission happens before the upgrade (HTTP 503 + Retry-After when full, 429 when one
address holds too many connections). After the upgrade: `hello` within the handshake
timeout, then frames and `end` until the client leaves or the session has `ended`.
Outgoing messages go through `WsConnection`, a bounded queue drained by a writer task, so
a session never waits on a slow client's socket: a client that reads too slowly for the
queue's bound (`max_send_queue_kb`, or `MAX_PENDING_PONGS` unanswered pongs) is closed
with 4419 and its session is kept for a resume, like any dropped connection.
Everything here runs on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections import deque
from typing import TYPE_CHECKING

from aiohttp import WSMsgType, web

from edge_server.background import spawn
from edge_server.config import UnknownServedModel
from edge_server.protocol import (
    PROTOCOL_VERSION,
    CloseCode,
    ErrorCode,
    Hello,
    ProtocolError,
    decode_frame,
    error_message,
    parse_hello,
    parse_json,
    ping_token,
)

if TYPE_CHECKING:
    from edge_server.app import EdgeServer
    from edge_server.lan.client_address import ClientAddress
    from edge_server.sessions import Session

log = logging.getLogger(__name__)
ACK_INTERVAL_S = 0.2
MAX_MESSAGE_BYTES = 4 << 20
MAX_PENDING_PONGS = 16  # pongs waiting to be written before the client counts as too slow
MESSAGE_OVERHEAD = 64  # bytes counted per queued message on top of its JSON text
SLOW_CLOSE_GRACE_S = 10.0  # a too-slow client's close frame must be read within this
WRITER_GRACE_S = 5.0  # after the handler ends, undelivered messages may take this long
SERVER_KEY: web.AppKey = web.AppKey("earshot_server", object)


class _Outgoing:
    """One queued message: its text, the bytes it counts against the bound, its kind."""

    __slots__ = ("kind", "size", "text")

    def __init__(self, text: str, size: int, kind: str) -> None:
        self.text = text
        self.size = size
        self.kind = kind  # "ack", "pong", "msg" or "close"


class WsConnection:
    """Outgoing half of one client WebSocket: a bounded queue and the task that writes it.

    `send()` never waits. Messages queued while `bounded` is False (the `ready` and the
    finals re-sent on resume, whose size is the session's own) do not count; afterwards the
    JSON text of the queued messages (+ `MESSAGE_OVERHEAD` each) may not exceed
    `max_queue_bytes`, and at most `MAX_PENDING_PONGS` pongs may wait. Past either bound the
    client is not reading: the queue is dropped, the socket closed with 4419
    (`client_too_slow`, no `error` message: it could not be delivered before the backlog) and
    `too_slow` says why. Acks coalesce: a queued ack is updated in place, never doubled.
    Event loop only.
    """

    def __init__(self, ws: web.WebSocketResponse, peer: str, max_queue_bytes: int,
                 transport: asyncio.BaseTransport | None = None) -> None:
        self.ws = ws
        self.peer = peer
        self.max_queue_bytes = max_queue_bytes
        self.transport = transport
        self.bounded = False
        self.closing = False
        self.too_slow: str | None = None
        self.queued_bytes = 0
        self.pending_pongs = 0
        self._items: deque[_Outgoing] = deque()
        self._ack: _Outgoing | None = None  # the ack waiting in the queue, if any
        self._wake = asyncio.Event()
        self._closer: asyncio.Task | None = None
        self._close_code = 1000
        self.writer = asyncio.get_running_loop().create_task(self._write())

    # ---- queueing ----------------------------------------------------------------------
    def send(self, message: dict) -> None:
        self._put(json.dumps(message, separators=(",", ":")), "msg")

    def send_ack(self, seq: int) -> None:
        """Acknowledge frames up to `seq`; replaces an ack still waiting in the queue."""
        text = json.dumps({"type": "ack", "seq": seq}, separators=(",", ":"))
        if self._ack is not None and not self.closing:
            if self.bounded:
                self.queued_bytes += len(text) - len(self._ack.text)
                self._ack.size += len(text) - len(self._ack.text)
            self._ack.text = text
            return
        self._ack = self._put(text, "ack")

    def send_pong(self, t: object) -> None:
        """Answer a ping with its token; a client with too many pongs unread is too slow."""
        if self.closing:
            return
        if self.pending_pongs >= MAX_PENDING_PONGS:
            self.give_up(f"{MAX_PENDING_PONGS} pongs not yet read")
            return
        if self._put(json.dumps({"type": "pong", "t": t}, separators=(",", ":")), "pong"):
            self.pending_pongs += 1

    def _put(self, text: str, kind: str) -> _Outgoing | None:
        if self.closing:
            return None
        size = len(text) + MESSAGE_OVERHEAD if self.bounded else 0
        if self.queued_bytes + size > self.max_queue_bytes:
            self.give_up(f"more than {self.max_queue_bytes // 1024} KB waiting to be sent")
            return None
        item = _Outgoing(text, size, kind)
        self.queued_bytes += size
        self._items.append(item)
        self._wake.set()
        return item

    def close(self, code: int, reason: str = "") -> None:
        """Close after the queued messages have been written."""
        if not self.closing:
            self.closing = True
            self._close_code = code
            self._items.append(_Outgoing(reason, 0, "close"))
            self._wake.set()

    def give_up(self, why: str) -> None:
        """The client reads too slowly: drop the queue, close with 4419 now."""
        if self.closing:
            return
        self.closing = True
        self.too_slow = why
        self._items.clear()
        self._ack = None
        self.queued_bytes = self.pending_pongs = 0
        self._wake.set()  # the writer ends (or ends its current write first)
        self._closer = spawn(self._close_slow(f"client too slow: {why}"), "ws-close-slow")

    # ---- writing -----------------------------------------------------------------------
    async def _write(self) -> None:
        try:
            while True:
                while not self._items:
                    if self.too_slow is not None:
                        return
                    self._wake.clear()
                    await self._wake.wait()
                item = self._items.popleft()
                self.queued_bytes -= item.size
                if item is self._ack:
                    self._ack = None
                elif item.kind == "pong":
                    self.pending_pongs -= 1
                elif item.kind == "close":
                    await self.ws.close(code=self._close_code, message=_reason(item.text))
                    return
                await self.ws.send_str(item.text)
        except (ConnectionError, RuntimeError):
            return

    async def _close_slow(self, reason: str) -> None:
        """Queue the 4419 close frame behind what the socket already holds; reset the
        connection if the client has not taken it within SLOW_CLOSE_GRACE_S."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SLOW_CLOSE_GRACE_S
        with contextlib.suppress(TimeoutError, ConnectionError, RuntimeError):
            await asyncio.wait_for(
                self.ws.close(code=CloseCode.CLIENT_TOO_SLOW, message=_reason(reason),
                              drain=False), SLOW_CLOSE_GRACE_S)
        while (self.transport is not None and self.transport.get_write_buffer_size()
               and loop.time() < deadline):
            await asyncio.sleep(0.1)
        self._abort_if_stuck()

    def _abort_if_stuck(self) -> None:
        """Reset the TCP connection if bytes are still waiting in our buffer (the client
        stopped reading); what the kernel already holds is its business."""
        transport = self.transport
        if transport is not None and transport.get_write_buffer_size():
            transport.abort()

    async def finish(self) -> None:
        """After the handler: let queued messages go out, then reset a stuck socket."""
        self.close(1000)
        tasks = {t for t in (self.writer, self._closer) if t is not None}
        await asyncio.wait(tasks, timeout=WRITER_GRACE_S + (
            SLOW_CLOSE_GRACE_S if self._closer is not None else 0))
        if not self.writer.done():  # stuck behind a client that does not read
            self._abort_if_stuck()
            await asyncio.wait({self.writer}, timeout=1.0)


def _reason(text: str) -> bytes:
    """A close reason: at most 120 bytes of UTF-8 (the frame allows 123)."""
    return text.encode()[:120].decode("utf-8", "ignore").encode()


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
    conn = WsConnection(ws, str(client), settings.max_send_queue_kb * 1024, request.transport)
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
            session.detach(conn)  # kept for a resume (also after `client_too_slow`)
        if conn.too_slow is not None:
            server.stats["slow_clients"] += 1
            log.info("closing %s: client too slow (%s)", client, conn.too_slow)
        try:
            await conn.finish()
        finally:
            server.connections_per_ip[peer] -= 1
            if not server.connections_per_ip[peer]:
                del server.connections_per_ip[peer]
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
    try:
        model = server.resolve_model(hello.model)
    except UnknownServedModel as exc:
        raise ProtocolError(ErrorCode.UNKNOWN_MODEL, str(exc)) from None
    if hello.resume:
        if session is None:
            raise ProtocolError(ErrorCode.SESSION_UNKNOWN,
                                f"session {hello.session!r} is unknown or expired; start a new one")
        if session.token != hello.token or session.sample_rate != hello.sample_rate:
            raise ProtocolError(ErrorCode.UNAUTHORIZED, "resume does not match the session")
        if hello.model is not None and model != session.model:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"resume asks for model {model} but "
                                f"the session uses {session.model}")
        server.stats["sessions_resumed"] += 1
    else:
        if session is not None:
            raise ProtocolError(ErrorCode.BAD_MESSAGE,
                                "session id already in use; send resume=true to continue it")
        # admission again: upgrades admitted together (a herd) had not created their
        # sessions yet when each was checked
        if (reason := server.admission_refusal()) is not None:
            server.stats["sessions_rejected"] += 1
            raise ProtocolError(ErrorCode.OVERLOADED, reason)
        session = server.registry.create(hello.session, hello.token, hello.sample_rate,
                                         hello.partials, model=model)
        server.stats["sessions_started"] += 1
    conn.send({"type": "ready", "protocol": PROTOCOL_VERSION, "session": session.id,
               "resumed": hello.resume, "next_seq": session.next_seq,
               "model": session.model,
               "server": server.describe(),
               "partial_interval_ms": server.settings.partial_interval_ms})
    session.attach(conn, hello.last_final)
    conn.bounded = True  # the ready and re-sent finals above are the session's own size
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
                conn.send_ack(acked)
        elif msg.type == WSMsgType.TEXT:
            body = parse_json(msg.data)
            if body["type"] == "end":
                if session.next_seq - 1 > acked:
                    acked = session.next_seq - 1
                    conn.send_ack(acked)
                async with session.lock:
                    await session.end()
            elif body["type"] == "ping":
                conn.send_pong(ping_token(body.get("t")))
                await asyncio.sleep(0)  # let the writer take it: only an unread socket stalls
            else:
                raise ProtocolError(ErrorCode.BAD_MESSAGE, f"unknown message type {body['type']!r}")
        elif msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            return
    if session.ended:
        conn.close(1000, "ended")
