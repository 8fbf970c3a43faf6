"""The edge server embedded in the desktop app: same code, on 127.0.0.1, CPU engine.

`EmbeddedServer.start()` returns at once; the server runs its own asyncio loop in a daemon
thread and loads the engine in a worker process (the same isolation as on a GPU box).
`status` moves "starting" -> "ready" (or "failed: ..."); `wait_ready()` blocks until then.
It listens on a free port with a random token, so other local users cannot use it.
start/stop/wait_ready may be called from any thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import threading

from aiohttp import web

from edge_server.config import ServerSettings

log = logging.getLogger(__name__)


class EmbeddedServer:
    def __init__(self, model: str | None = None, threads: int | None = None,
                 device: str = "cpu") -> None:
        self.token = secrets.token_urlsafe(18)
        self.settings = ServerSettings(host="127.0.0.1", port=0, model=model, device=device,
                                       workers=1, threads=threads, token=self.token, auth="all",
                                       max_sessions=8, mdns=False)
        self.url: str | None = None
        self.status = "stopped"
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self.status = "starting"
        self._thread = threading.Thread(target=self._run, name="embedded-server", daemon=True)
        self._thread.start()

    def wait_ready(self, timeout: float | None = None) -> bool:
        self._ready.wait(timeout)
        return self.status == "ready"

    def stop(self, timeout: float = 15.0) -> None:
        loop = self._loop
        if loop is not None and self._stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop ended meanwhile
                loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout)
        self._thread = None
        self.status = "stopped"

    def _run(self) -> None:
        from edge_server.engine import EngineError
        from models.catalog import UnknownModelError
        from models.store import ModelNotReadyError

        try:
            asyncio.run(self._main())
        except (ModelNotReadyError, EngineError, UnknownModelError, OSError) as exc:
            log.error("embedded server cannot start: %s", exc)
            self.status = f"failed: {exc}"
        except Exception as exc:  # report, never take the app down
            log.exception("embedded server failed")
            self.status = f"failed: {exc}"
        finally:
            self._ready.set()

    async def _main(self) -> None:
        from edge_server.app import EdgeServer

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = EdgeServer(self.settings)
        runner = web.AppRunner(server.make_app(), handle_signals=False, access_log=None,
                            shutdown_timeout=5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        while server.pool.ready_count == 0 and not server.startup_error:
            await asyncio.sleep(0.05)
        self.status = f"failed: {server.startup_error}" if server.startup_error else "ready"
        self._ready.set()
        await self._stop.wait()
        await server.drain(timeout=10)
        await runner.cleanup()
