"""`earshot-server`: the edge server (headless: needs no Qt and no PortAudio).

Off the loopback (e.g. `--host 0.0.0.0`) it serves https/wss with its identity
certificate (plain http/ws only from this machine) and advertises itself over mDNS;
`earshot-server token` and `earshot-server identity` show what clients need to pair.

Starts the HTTP/WebSocket server, loads the engine in worker processes, and prints
`earshot-server listening on http://HOST:PORT` once the socket is bound. SIGTERM or
SIGINT drains: new sessions are refused, open segments are finished and their finals
delivered, clients are told, then the process exits.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import ssl
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from edge_server.background import spawn
from edge_server.config import ServerSettings, load_settings, served_models
from edge_server.engine.runtime import DEVICES
from edge_server.lan.auth import AUTH_MODES, is_loopback
from edge_server.lan.identity import (
    ServerIdentity,
    certificate_fingerprint,
    load_or_create_identity,
)
from edge_server.lan.tls_site import LanSite

if TYPE_CHECKING:
    from edge_server.app import EdgeServer


KEEPALIVE_S = 75.0  # an idle HTTP keep-alive connection is closed after this (aiohttp: 3630)


def build_parser() -> argparse.ArgumentParser:
    d = ServerSettings()
    p = argparse.ArgumentParser(prog="earshot-server", description=__doc__.split("\n")[0])
    p.add_argument("--config", type=Path, help="TOML file with any of the settings below")
    p.add_argument("--host", help=f"address to bind (default {d.host})")
    p.add_argument("--port", type=int, help=f"port (default {d.port}; 0 picks a free one)")
    p.add_argument("--model", metavar="ID[,ID]",
                   help="catalog model id(s) to serve, comma-separated; every worker loads "
                   "them all and the first is the default for clients that name none "
                   "(default: moonshine-tiny-en; config file: models = [...])")
    p.add_argument("--device", choices=DEVICES, help="inference device (default auto)")
    p.add_argument("--workers", type=int, help=f"worker processes (default {d.workers})")
    p.add_argument("--threads", type=int, help="onnxruntime threads per worker")
    p.add_argument("--queue", metavar="URL",
                   help="decode through Redis Streams: redis://[:PASSWORD@]HOST:PORT/DB "
                   "(rediss:// for TLS); workers run `earshot-worker --queue URL` on any "
                   "machine, local ones only with --workers N (docs/scale-out.md)")
    p.add_argument("--token", help="token clients must present (default: the token file's)")
    p.add_argument("--token-file", help="where the token is kept (default: "
                   "~/.config/earshot/server-token; `earshot-server token` shows it)")
    p.add_argument("--auth", choices=AUTH_MODES, help="who needs the token: remote (default: "
                   "clients on other hosts), all, or none")
    p.add_argument("--tls-cert", help="PEM certificate (chain) for https:// and wss:// "
                   "(default: the server's own self-signed identity certificate)")
    p.add_argument("--tls-key", help="PEM private key of --tls-cert")
    p.add_argument("--state-dir", help="where the server id and identity certificate live "
                   "(default: the user data folder; `earshot-server identity` shows them)")
    p.add_argument("--allow-plain-lan", action="store_true", default=None,
                   help="also accept plain http:// and ws:// from other hosts (token sent in "
                   "clear; logged as a warning)")
    p.add_argument("--trusted-proxies", metavar="NET[,NET]",
                   help="reverse proxies whose Forwarded/X-Forwarded-For headers are believed")
    p.add_argument("--max-sessions", type=int, help=f"default {d.max_sessions}")
    p.add_argument("--max-batch", type=int, help=f"default {d.max_batch}")
    p.add_argument("--max-wait-ms", type=float, help=f"default {d.max_wait_ms:g}")
    p.add_argument("--partial-interval-ms", type=int, help=f"default {d.partial_interval_ms}")
    p.add_argument("--endpoint-ms", type=int, help="trailing silence that ends a segment")
    p.add_argument("--max-segment-s", type=float, help="longest segment before a cut")
    p.add_argument("--resume-grace-s", type=float, help=f"default {d.resume_grace_s:g}")
    p.add_argument("--max-upload-audio-s", type=float, help="longest audio of one upload "
                   f"to /v1/audio/transcriptions (default {d.max_upload_audio_s:g} = 4 h)")
    p.add_argument("--noop-engine", action="store_true", default=None,
                   help="no inference (measures the server's own overhead)")
    p.add_argument("--log-json", action="store_true", default=None, help="JSON log lines")
    p.add_argument("--name", help="name advertised on the LAN (default: the host name)")
    p.add_argument("--mdns-interfaces", metavar="IP[,IP]",
                   help="advertise over mDNS only on these interface addresses")
    p.add_argument("--no-mdns", dest="mdns", action="store_false", default=None,
                   help="do not advertise over mDNS")
    p.add_argument("--wyoming", action="store_true", default=None,
                   help="also serve the Wyoming protocol (Home Assistant speech-to-text); "
                   "no token: open to the wyoming_allow networks (default: loopback and LAN)")
    p.add_argument("--wyoming-host", help="address for Wyoming (default: --host)")
    p.add_argument("--wyoming-port", type=int,
                   help=f"Wyoming port (default {d.wyoming_port}; 0 picks a free one)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def serves_lan(settings: ServerSettings) -> bool:
    """Whether the bind address is reachable from other hosts (anything but loopback)."""
    return settings.host not in ("localhost",) and not is_loopback(settings.host)


def tls_files(settings: ServerSettings, identity: ServerIdentity | None) -> tuple[str, str] | None:
    """(certificate, key) to serve: the admin's, else the identity's off the loopback, else
    None (plain http/ws). Raises ValueError when only one of the pair is given."""
    if settings.tls_cert or settings.tls_key:
        if not (settings.tls_cert and settings.tls_key):
            raise ValueError("--tls-cert and --tls-key go together")
        return settings.tls_cert, settings.tls_key
    if identity is not None and serves_lan(settings):
        return str(identity.cert_path), str(identity.key_path)
    return None


def tls_context(files: tuple[str, str] | None) -> ssl.SSLContext | None:
    """The server's TLS context, or None for plain http/ws. Raises ValueError when unusable."""
    if files is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(*files)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot use TLS certificate {files[0]}: {exc}") from None
    return context


def served_fingerprint(files: tuple[str, str] | None) -> str:
    if files is None:
        return ""
    try:
        return certificate_fingerprint(Path(files[0]).read_bytes())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read TLS certificate {files[0]}: {exc}") from None


async def start_wyoming(server: EdgeServer) -> None:
    """Serve Wyoming beside HTTP and print where (the real port when 0 was asked)."""
    from edge_server.wyoming_server import WyomingServer

    server.wyoming = WyomingServer(server)
    await server.wyoming.start()
    print(f"earshot-server wyoming on {server.wyoming.uri}", flush=True)


async def serve(settings: ServerSettings, identity: ServerIdentity) -> None:
    from edge_server.app import EdgeServer

    log = logging.getLogger(__name__)
    files = tls_files(settings, identity)
    context = tls_context(files)
    server = EdgeServer(settings, identity, served_fingerprint(files))
    runner = web.AppRunner(server.make_app(), handle_signals=False, access_log=None,
                            shutdown_timeout=5, keepalive_timeout=KEEPALIVE_S)
    await runner.setup()
    site: web.BaseSite
    if serves_lan(settings) and context is not None:
        site = LanSite(runner, settings.host, settings.port, context,
                       allow_plain_remote=settings.allow_plain_lan,
                       first_byte_timeout=settings.handshake_timeout_s)
    else:
        site = web.TCPSite(runner, settings.host, settings.port, ssl_context=context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # the real port when 0 was asked
    scheme = "https" if context is not None else "http"
    print(f"earshot-server listening on {scheme}://{settings.host}:{port}", flush=True)
    print(f"earshot-server identity {server.server_id} fingerprint "
          f"{server.tls_fingerprint or '-'} certificate {files[0] if files else '-'}", flush=True)
    if isinstance(site, LanSite):
        if settings.allow_plain_lan:
            log.warning("allow_plain_lan: plain http/ws accepted from other hosts; tokens and "
                        "audio cross the network unencrypted")
        else:
            log.info("other hosts must use https/wss; plain http/ws only from this machine")
    elif serves_lan(settings) and context is None:
        log.warning("serving plain http/ws on %s: tokens and audio cross the network "
                    "unencrypted", settings.host)
    if settings.wyoming:
        await start_wyoming(server)
    if settings.mdns:
        spawn(server.start_advertising(port), "mdns-start")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    logging.getLogger(__name__).info("draining")
    await server.drain()
    if server.wyoming is not None:
        await server.wyoming.stop()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["token"]:
        from edge_server.lan.token_cmd import main as token_main

        return token_main(argv[1:])
    if argv[:1] == ["identity"]:
        from edge_server.lan.identity_cmd import main as identity_main

        return identity_main(argv[1:])
    if argv[:1] == ["doctor"]:
        from edge_server.doctor import main as doctor_main

        return doctor_main(argv[1:])
    if argv[:1] == ["models"]:  # `earshot models` needs the desktop extra (keyring)
        from edge_server.models_cli import main as models_main

        return models_main(argv)
    args = build_parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k not in ("config", "verbose")}
    try:
        settings = load_settings(args.config, overrides)
        if args.model:  # the command line wins over a config file's `models`
            from dataclasses import replace

            settings = replace(settings, models=())
        if settings.queue and args.workers is None:  # --queue: remote workers by default
            from dataclasses import replace as _replace

            settings = _replace(settings, workers=0)
        served = served_models(settings)  # an unknown id: the catalog's ids, now
        if settings.queue:  # unreachable Redis or a wrong password: one line, now
            from edge_server.queue.worker_cli import connect

            connect(settings.queue).close()
        identity = load_or_create_identity(Path(settings.state_dir) if settings.state_dir
                                           else None)
        tls_context(tls_files(settings, identity))  # an unusable certificate: one line, now
    except (OSError, ValueError) as exc:
        print(f"earshot-server: error: {exc}", file=sys.stderr)
        return 2
    from edge_server.logging_setup import configure

    configure(settings.log_json, logging.DEBUG if args.verbose else logging.INFO)
    from edge_server.engine import EngineError
    from edge_server.engine.runtime import import_onnxruntime
    from models.catalog import UnknownModelError, load_catalog
    from models.store import ModelNotReadyError, require_model

    try:
        import_onnxruntime()
        if not settings.noop_engine:
            catalog = load_catalog()
            for model_id in served if settings.workers or not settings.queue else ():
                require_model(model_id)  # (a queue gateway without local workers decodes none)
            require_model(catalog.default_vad)
        asyncio.run(serve(settings, identity))
    except (ModelNotReadyError, EngineError, UnknownModelError, OSError, ValueError) as exc:
        print(f"earshot-server: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
