"""The server under test: its URL, credentials, and (when this tool started it, or it runs
on this machine) its process. Also the pre-flight check that turns a bad URL, an
unreachable server or a wrong token into one clear error before any load is sent.
Blocking helpers; `preflight` runs its own short asyncio loop.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from desktop.stream_client import StreamClient, StreamError
from loadtest.local_server import LocalServer
from loadtest.server_probe import LocalProbe, RemoteProbe

DEFAULT_ENDPOINT_S = 0.6  # the server's default [segmenter] endpoint_ms


class TargetError(RuntimeError):
    """The server cannot be load-tested as given (bad URL, unreachable, bad token)."""


def check_url(url: str) -> str:
    """A server URL as http(s)://HOST[:PORT] (ws/wss accepted and mapped); TargetError
    for anything else."""
    parsed = urllib.parse.urlparse(url)
    scheme = {"ws": "http", "wss": "https"}.get(parsed.scheme, parsed.scheme)
    if scheme not in ("http", "https") or not parsed.hostname:
        raise TargetError(f"bad server URL {url!r}: expected http(s)://HOST:PORT "
                          "(or ws(s)://), or 'local'")
    try:
        port = parsed.port
    except ValueError:
        raise TargetError(f"bad server URL {url!r}: the port is not a number") from None
    host = f"[{parsed.hostname}]" if ":" in parsed.hostname else parsed.hostname
    return f"{scheme}://{host}" + (f":{port}" if port else "")


@dataclass
class Target:
    url: str
    token: str | None = None
    fingerprint: str | None = None  # pinned SHA-256 of a https server's certificate
    ssl_context: ssl.SSLContext | None = None
    server: LocalServer | None = None  # started by this tool
    server_pid: int | None = None  # a server on this machine (--server-pid)
    endpoint_s: float = DEFAULT_ENDPOINT_S

    @property
    def local_pid(self) -> int | None:
        return self.server.pid if self.server is not None else self.server_pid

    def probe(self) -> LocalProbe | RemoteProbe:
        pid = self.local_pid
        return LocalProbe(pid) if pid is not None else RemoteProbe(self.url)

    def health(self) -> dict:
        """/healthz (certificate not checked: no token is sent); {} when unreachable."""
        if self.server is not None:
            return self.server.health()
        return self._get("/healthz")

    def stats(self) -> dict:
        """/api/stats (open without the token: counters only); {} when unavailable."""
        return self._get("/api/stats")

    def _get(self, path: str) -> dict:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        try:
            with urllib.request.urlopen(self.url + path, timeout=5, context=ctx) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as err:
            try:
                return json.loads(err.read())
            except ValueError:
                return {"status": f"http {err.code}"}
        except (OSError, ValueError):
            return {}

    def client(self, **kwargs) -> StreamClient:
        return StreamClient(self.url, token=self.token, fingerprint=self.fingerprint,
                            ssl_context=self.ssl_context, **kwargs)


def preflight(target: Target) -> dict:
    """Check the server answers and takes this token: /healthz, then one empty stream
    (hello, end). Returns the health document. TargetError with the reason otherwise."""
    health = target.health()
    if not health:
        raise TargetError(f"cannot reach {target.url} (no answer from /healthz)")

    async def one() -> None:
        client = target.client(partials=False, connect_timeout_s=10.0)
        try:
            await client.connect()
            await client.finish(timeout_s=30)
        finally:
            await client.close()

    try:
        asyncio.run(one())
    except StreamError as exc:
        if exc.code == "unauthorized":
            raise TargetError(f"{target.url} refused the token (401 unauthorized): pass the "
                              "server's token with --token (`earshot-server token` on the "
                              "box)") from None
        if exc.code in ("unreachable", "timeout", "identity_mismatch", "tls_required"):
            raise TargetError(f"cannot stream to {target.url}: {exc.message}") from None
        if exc.code not in ("overloaded", "rate_limited"):
            raise TargetError(f"{target.url} refused a test stream: {exc}") from None
    return health
