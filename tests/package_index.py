"""A real local package index for download tests: an aiohttp server on 127.0.0.1 that
answers the simple API (PEP 691 JSON, or PEP 503 HTML with `html=True`) and serves wheel
files with HTTP Range, plus switches for the failures a real index or network shows.

    with PackageIndex() as index:
        index.add(wheel_path)                    # listed under its project, sha256 from bytes
        os.environ["EARSHOT_PACKAGE_INDEX"] = index.url
        index.cut_after = 1_000_000              # next file response: close after 1 MB
        index.ignore_range = True                # answer 200 with the whole file
        index.rate = 5_000_000                   # bytes per second (None: as fast as possible)
        index.stall_after = 300_000              # file bodies stop after 300 kB ...
        index.hold.clear()                       # ... while this is clear (set: go on)
        index.requests                           # [(path, Range header or None), ...]

Runs its own event loop in a daemon thread; the switches may be changed from any thread
between requests.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import socket
import threading
import zipfile
from pathlib import Path

from aiohttp import web

JSON_TYPE = "application/vnd.pypi.simple.v1+json"


def build_wheel(folder: Path, spec, source: Path | None = None) -> Path:
    """A wheel-shaped zip of catalog model `spec` in `folder`, named as its index file
    (`<dist>-<version>-py3-none-<platform or any>.whl`), holding the catalog's members
    with the real model files from `source` (default: where the model store finds them)."""
    from models.store import require_model

    source = source or require_model(spec.id)
    name, _, version = spec.source.pypi.partition("==")
    dist = re.sub(r"[-_.]+", "_", name)
    path = folder / f"{dist}-{version}-py3-none-{spec.source.platform or 'any'}.whl"
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for f in spec.files:
            zf.write(source / f.name, f.member)
        zf.writestr(f"{dist}-{version}.dist-info/WHEEL", "Wheel-Version: 1.0\n")
    return path


def wheel_project(filename: str) -> str:
    """PEP 503 name of the project a wheel file belongs to."""
    return re.sub(r"[-_.]+", "-", filename.split("-")[0]).lower()


class PackageIndex:
    def __init__(self, html: bool = False, ssl_context=None) -> None:
        self.html = html
        self.ssl_context = ssl_context  # an ssl.SSLContext: serve https
        self.files: dict[str, bytes] = {}
        self.hashes: dict[str, str] = {}  # file name -> sha256 the index lists
        self.requests: list[tuple[str, str | None]] = []
        self.cut_after: int | None = None  # close the next file response after this many bytes
        self.ignore_range = False
        self.rate: int | None = None  # bytes per second of file bodies
        self.stall_after: int | None = None  # bytes of a body after which `hold` is obeyed
        self.hold = threading.Event()  # cleared: bodies stop at stall_after until it is set
        self.hold.set()
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="package-index")

    # ---- setup ---------------------------------------------------------------------------
    def add(self, wheel: Path, sha256: str | None = None) -> None:
        """Serve `wheel`; the index lists `sha256` (default: the true one)."""
        data = wheel.read_bytes()
        self.files[wheel.name] = data
        self.hashes[wheel.name] = sha256 or hashlib.sha256(data).hexdigest()

    def __enter__(self) -> PackageIndex:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc) -> None:
        self.hold.set()
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/simple/{project}/", self._project)
        app.router.add_get("/files/{name}", self._file)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await self._runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        site = web.SockSite(self._runner, sock, ssl_context=self.ssl_context)
        await site.start()
        scheme = "https" if self.ssl_context else "http"
        self.url = f"{scheme}://127.0.0.1:{sock.getsockname()[1]}/simple"

    # ---- handlers --------------------------------------------------------------------------
    async def _project(self, request: web.Request) -> web.Response:
        self.requests.append((request.path, None))
        project = request.match_info["project"]
        names = [n for n in self.files if wheel_project(n) == project]
        if not names:
            raise web.HTTPNotFound()
        if self.html:
            links = "".join(f'<a href="../../files/{n}#sha256={self.hashes[n]}">{n}</a><br>'
                            for n in names)
            return web.Response(text=f"<html><body>{links}</body></html>",
                                content_type="text/html")
        files = [{"filename": n, "url": f"../../files/{n}", "size": len(self.files[n]),
                  "hashes": {"sha256": self.hashes[n]}} for n in names]
        return web.json_response({"meta": {"api-version": "1.1"}, "name": project,
                                  "files": files}, content_type=JSON_TYPE)

    async def _file(self, request: web.Request) -> web.StreamResponse:
        rng = request.headers.get("Range")
        self.requests.append((request.path, rng))
        data = self.files.get(request.match_info["name"])
        if data is None:
            raise web.HTTPNotFound()
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if match and not self.ignore_range:
            start = int(match.group(1))
            if start >= len(data):
                raise web.HTTPRequestRangeNotSatisfiable(
                    headers={"Content-Range": f"bytes */{len(data)}"})
        resp = web.StreamResponse(status=206 if start else 200)
        resp.content_length = len(data) - start
        resp.content_type = "application/octet-stream"
        if start:
            resp.headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        await resp.prepare(request)
        cut, self.cut_after = self.cut_after, None
        pos, sent = start, 0
        while pos < len(data):
            if request.transport is None or request.transport.is_closing():
                return resp  # the client went away (cancelled)
            stall = self.stall_after
            if stall is not None and pos - start >= stall and not self.hold.is_set():
                await asyncio.sleep(0.01)
                continue
            block = data[pos:pos + (1 << 16)]
            if stall is not None and pos - start < stall:
                block = block[:stall - (pos - start)]
            if cut is not None and sent + len(block) > cut:
                await resp.write(block[:cut - sent])
                request.transport.close()  # mid-body: the client sees the connection drop
                return resp
            await resp.write(block)
            pos += len(block)
            sent += len(block)
            if self.rate:
                await asyncio.sleep(len(block) / self.rate)
        await resp.write_eof()
        return resp
