"""The edge server as an object: engine workers, VAD, scheduler, sessions, HTTP routes.

`EdgeServer(settings).make_app()` builds the aiohttp application. Workers load in the
background at startup; `/healthz` says 503 "starting" until one is ready, and stream
connections are refused with 503 until then. `drain()` implements graceful shutdown:
refuse new sessions, end every connected session (flush its open segment), deliver the
finals, then stop the workers.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid
from collections import Counter
from typing import TYPE_CHECKING

from aiohttp import web

from edge_server.clips import ClipTranscriber
from edge_server.config import ServerSettings, UnknownServedModel, served_models
from edge_server.lan.auth import AuthPolicy, FailedAttempts, TokenSource, default_token_file
from edge_server.lan.pairing import add_pairing_routes
from edge_server.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from edge_server.metrics import ServerMetrics
from edge_server.openai_api import add_openai_routes
from edge_server.protocol import PROTOCOL_VERSION, STREAM_PATH, ErrorCode, error_message
from edge_server.scheduler import Scheduler
from edge_server.sessions import SessionRegistry
from edge_server.vad import SileroVad
from edge_server.vad_service import VadService
from edge_server.workers import WorkerConfig, WorkerPool
from edge_server.ws_handler import SERVER_KEY, stream_handler

if TYPE_CHECKING:
    from edge_server.lan.identity import ServerIdentity
    from edge_server.queue.pool import RedisPool
    from edge_server.wyoming_server import WyomingServer

log = logging.getLogger(__name__)
TXT_MAX = 255  # bytes of one DNS-SD TXT string ("key=value")


def txt_models(models: tuple[str, ...]) -> str:
    """The `models` TXT value: ids joined by commas, as many as fit one TXT string (the
    default first; ids that do not fit are left out, never cut)."""
    value = ""
    for model in models:
        candidate = f"{value},{model}" if value else model
        if len(f"models={candidate}".encode()) > TXT_MAX:
            break
        value = candidate
    return value


def _auth_policy(settings: ServerSettings) -> AuthPolicy:
    from pathlib import Path

    path = None
    if settings.auth != "none" and not settings.token:
        path = Path(settings.token_file) if settings.token_file else default_token_file()
    return AuthPolicy(settings.auth, TokenSource(settings.token, path),
                      FailedAttempts(settings.max_auth_failures, settings.auth_window_s,
                                     settings.auth_lockout_s),
                      trusted_proxies=settings.trusted_proxies)


class EdgeServer:
    def __init__(self, settings: ServerSettings, identity: ServerIdentity | None = None,
                 tls_fingerprint: str = "") -> None:
        """`identity`: the persistent id (None: a random one, as for the app's embedded
        server); `tls_fingerprint`: SHA-256 of the certificate served ("" without TLS)."""
        self.settings = settings
        self.identity = identity
        self.server_id = identity.server_id if identity else uuid.uuid4().hex[:16]
        self.tls_fingerprint = tls_fingerprint
        self.bind_host = settings.host  # the CLI sets what it really bound
        self.models = served_models(settings)  # the default first; ValueError if unknown
        self.pool: WorkerPool | RedisPool
        if settings.queue:  # workers anywhere, through Redis Streams (edge_server/queue)
            from edge_server.queue.pool import QueueConfig, RedisPool

            self.pool = RedisPool(QueueConfig(
                url=settings.queue, model_ids=self.models, workers=settings.workers,
                device=settings.device, threads=settings.threads, noop=settings.noop_engine,
                local_batch=settings.max_batch,
                deadline_floor_s=settings.batch_deadline_floor_s,
                deadline_cap_s=settings.batch_deadline_cap_s,
                deadline_factor=settings.batch_deadline_factor,
                results_ttl_s=settings.queue_results_ttl_s))
        else:
            self.pool = WorkerPool(WorkerConfig(
                model_ids=self.models, device=settings.device, threads=settings.threads,
                workers=settings.workers, noop=settings.noop_engine,
                deadline_floor_s=settings.batch_deadline_floor_s,
                deadline_cap_s=settings.batch_deadline_cap_s,
                deadline_factor=settings.batch_deadline_factor))
        self.vad = VadService(None if settings.noop_engine else SileroVad())
        self.metrics = ServerMetrics(self)
        self.scheduler = Scheduler(self.pool, self._deliver, settings.max_batch,
                                   settings.max_wait_ms, settings.degrade_after_s,
                                   settings.partial_budget_s, settings.clip_budget_s,
                                   self.metrics.observe_batch,
                                   max_session_rows=settings.max_session_rows,
                                   backlog_batch_s=settings.backlog_batch_s,
                                   degrade_recover_s=settings.degrade_recover_s,
                                   degrade_hold_s=settings.degrade_hold_s)
        self.registry = SessionRegistry(settings, self.vad, self.scheduler)
        self.clips = ClipTranscriber(self.scheduler, self.vad, settings.segmenter,
                                     settings.max_clip_jobs)
        self.auth = _auth_policy(settings)
        self.connections_per_ip: dict[str, int] = {}
        self.stats: Counter = Counter()
        self.draining = False
        self.started = time.monotonic()
        self.started_wall = time.time()
        self.startup_error: str | None = None
        self.advertiser = None
        self.wyoming: WyomingServer | None = None  # set by the CLI when Wyoming is on
        self._startup: asyncio.Task | None = None

    def _deliver(self, req, text, error) -> None:
        if req.kind == "clip":
            ClipTranscriber.resolve(req, text, error)
        else:
            self.registry.deliver(req, text, error)

    # ---- admission -----------------------------------------------------------------------
    def capacity(self) -> int | None:
        """Streams the pool can keep up with: 0.8 x the measured speed of one worker on
        finals and clips (partials are shed under load, so they do not count) x the
        pool's workers (`pool.size`: the configured ones; with --queue, every live worker
        on every machine). None until 20 batches with finals or clips were measured."""
        speed = self.scheduler.final_speed()
        if speed is None:
            return None
        return max(1, int(speed * self.pool.size * 0.8))

    def admission_refusal(self) -> str | None:
        """Why a new session is refused right now (HTTP 503), or None to admit it.

        Refused only when draining, before any worker has ever loaded (or when every
        worker slot fails to load its engine again), or when truly over capacity:
        `max_sessions`, the oldest final waiting past `overload_after_s` (not counted while
        worker slots restart: that queue is a restart's, not the load's), or the measured
        capacity. While workers restart, new sessions are admitted and their audio waits
        in the scheduler's queues."""
        if self.draining:
            return "server is shutting down"
        if not self.pool.ever_ready:
            if self.startup_error:
                return f"server failed to start: {self.startup_error}"
            return "server is starting (models loading)"
        if self.pool.failed:
            if getattr(self.pool, "lost", None):
                return f"no engine worker is reachable ({self.pool.lost})"
            return "no engine worker is running (restarts are failing)"
        if self.registry.active >= self.settings.max_sessions:
            return f"server is full ({self.settings.max_sessions} sessions)"
        if (not self.pool.restarting
                and self.scheduler.oldest_final_wait() > self.settings.overload_after_s):
            return "server is overloaded (decode queue is behind)"
        cap = self.capacity()
        if cap is not None and self.registry.active >= cap:
            return f"server is at its measured capacity ({cap} streams)"
        return None

    # ---- discovery -----------------------------------------------------------------------
    def txt_record(self) -> dict[str, str]:
        """What the mDNS TXT record says about this server right now."""
        info = self.pool.info
        cap = self.capacity() or self.settings.max_sessions
        free = 0 if self.draining or not self.pool.serving else max(
            0, min(cap, self.settings.max_sessions) - self.registry.active)
        return {"protocol": str(PROTOCOL_VERSION), "id": self.server_id,
                "models": txt_models(self.models),
                "device": info.get("device") or self.settings.device,
                "capacity": str(free),
                "token": "required" if self.auth.token_required else "none",
                "auth": self.settings.auth,
                "tls": "1" if self.tls_fingerprint else "0", "fp": self.tls_fingerprint,
                "name": self.advertised_name}

    @property
    def model_id(self) -> str:
        """The default model: sessions that name none are decoded with it."""
        return self.models[0]

    def resolve_model(self, name: str | None) -> str:
        """The served model a client asked for (None or "": the default). Raises
        UnknownServedModel naming the served ids for a model this server does not serve."""
        if not name:
            return self.model_id
        if name not in self.models:
            raise UnknownServedModel(name, self.models)
        return name

    @property
    def advertised_name(self) -> str:
        return self.settings.name or socket.gethostname().split(".")[0] or "earshot"

    async def start_advertising(self, port: int) -> None:
        """Announce the server on the LAN once a worker is ready (a loading box is no help)."""
        from edge_server.lan.discovery import (
            WYOMING_SERVICE_TYPE,
            Advertiser,
            advertised_addresses,
        )

        interfaces = list(self.settings.mdns_interfaces) if self.settings.mdns_interfaces else None
        addresses = advertised_addresses(self.bind_host, interfaces)
        if not addresses:
            log.info("not advertising on the LAN: bound to %s, which no other host can reach "
                     "(start with --host 0.0.0.0 to serve the LAN)", self.bind_host)
            return
        while not self.pool.ready_count and not self.startup_error and not self.draining:
            await asyncio.sleep(0.05)
        if self.startup_error or self.draining:
            return
        extra = None  # Home Assistant keys a Wyoming box by its name: no random suffix
        if self.wyoming is not None:
            extra = [(WYOMING_SERVICE_TYPE, self.advertised_name, self.wyoming.port)]
        self.advertiser = Advertiser(f"{self.advertised_name}-{self.server_id[:6]}", port,
                                     interfaces, self.txt_record, extra=extra,
                                     addresses=addresses)
        try:
            await self.advertiser.start()
        except OSError as exc:
            log.warning("mDNS advertising failed: %s", exc)
            self.advertiser = None

    def describe(self) -> dict:
        info = self.pool.info
        return {"id": self.server_id, "fingerprint": self.tls_fingerprint,
                "model": self.model_id, "models": list(self.models),
                "device": info.get("device"), "provider": info.get("provider"),
                "workers": self.pool.size}

    # ---- app -----------------------------------------------------------------------------
    def make_app(self) -> web.Application:
        app = web.Application()
        app[SERVER_KEY] = self
        app.router.add_get(STREAM_PATH, stream_handler)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.metrics_page)
        add_openai_routes(app, self)
        add_pairing_routes(app, self)
        from edge_server.dashboard import add_dashboard_routes

        add_dashboard_routes(app, self)  # open without a token: read-only operational data
        app.on_startup.append(self._on_startup)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_startup(self, app: web.Application) -> None:
        self.scheduler.start()
        self.registry.start()
        self._startup = asyncio.get_running_loop().create_task(self._start_workers())

    async def _start_workers(self) -> None:
        try:
            await self.pool.start()
        except Exception as exc:
            self.startup_error = str(exc)
            log.error("workers failed to start: %s", exc)
            return
        info = self.pool.info
        log.info("ready: model(s) %s on %s, %d worker(s)%s", ", ".join(self.models),
                 info.get("provider"), self.settings.workers,
                 " local; remote ones register through the queue" if self.settings.queue
                 else "")

    async def _on_cleanup(self, app: web.Application) -> None:
        if self.advertiser is not None:
            await self.advertiser.stop()
        if self._startup:
            self._startup.cancel()
        await self.registry.stop()
        await self.scheduler.stop()
        await self.pool.stop()
        self.clips.close()
        self.vad.close()

    async def healthz(self, request: web.Request) -> web.Response:
        ready = self.pool.serving and not self.draining  # also while a worker restarts
        status = "draining" if self.draining else "ready" if ready else (
            "failed" if self.startup_error or self.pool.failed else "starting")
        body = {
            "status": status, "protocol": PROTOCOL_VERSION, "server": self.describe(),
            "workers_ready": self.pool.ready_count, "worker_restarts": self.pool.restart_count,
            "worker_pids": self.pool.pids(),
            "sessions": self.registry.active, "queue_depth": self.scheduler.queue_depth,
            "uptime_s": round(time.monotonic() - self.started, 1),
            "error": self.startup_error,
            "counters": dict(self.stats),
        }
        if hasattr(self.pool, "queue_stats"):  # --queue: live workers on every machine
            body["queue"] = self.pool.queue_stats()
        return web.json_response(body, status=200 if ready else 503)

    async def metrics_page(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(),
                            headers={"Content-Type": METRICS_CONTENT_TYPE})

    async def drain(self, timeout: float = 30.0) -> None:
        """Graceful shutdown: end every session, deliver its finals, within `timeout`."""
        self.draining = True
        if self.advertiser is not None:  # withdraw first: nobody should pick us now
            await self.advertiser.stop()
            self.advertiser = None
        sessions = list(self.registry.sessions.values())
        for s in sessions:
            if s.conn is not None and not s.ending:
                s.conn.send(error_message(ErrorCode.SHUTTING_DOWN,
                                          "server is shutting down; this turn ends now",
                                          fatal=False))
            async with s.lock:
                if not s.ending:
                    s.server_ended = True
                await s.end()
        try:
            await asyncio.wait_for(self.scheduler.wait_idle(), timeout)
        except TimeoutError:
            log.warning("drain timed out with %d request(s) queued", self.scheduler.queue_depth)
        await asyncio.sleep(0.2)  # let writers flush `ended`
        for s in sessions:
            if s.conn is not None:
                s.conn.close(1001, "server shutting down")
