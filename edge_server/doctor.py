"""`earshot-server doctor [--json]`: what this box has, in plain words, for an admin.

    earshot-server doctor [--config server.toml] [--host H] [--port P] [--model ID[,ID]]
                          [--device auto|cpu|cuda] [--no-engine] [--json]

Reads the same settings as `earshot-server` (config file, then flags) and checks, in order:
- earshot: version and Python;
- onnxruntime: the flavour(s) installed (exactly one of onnxruntime / onnxruntime-gpu),
  its version and the execution providers it lists;
- models: every served model (its form for the device) and the VAD present, every file's
  size and sha256 verified (models.store);
- engine: each served model loaded as the server would, and where its nodes really run
  (engine.placement, from a profiled warm-up): `cuda` only when the compute nodes run on
  CUDA; a CUDA box whose model falls back to CPU is reported with the nodes that did;
- port: the HTTP port (and Wyoming's with --wyoming) free to bind, or held by a running
  Earshot server (answers /healthz), or by another program;
- mDNS: the addresses the record would carry (edge_server.lan.discovery), or why none;
- token: the token file (present, owner-only, non-empty) and who must present it;
- TLS: the identity certificate (server id, SHA-256 fingerprint, expiry) or the admin's
  --tls-cert/--tls-key pair.
Read-only: it creates no token, identity or model file (the server creates the first two
on its first start). Each check is `ok`, `warn` (works, but look) or `fail` (the server
cannot do its job); the exit status is 1 when any check fails, else 0 (2: bad arguments).
Runs on the main thread; loading engines takes seconds per model.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import ssl
import stat
import sys
import urllib.request
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from edge_server.config import ServerSettings, load_settings, served_models

OK, WARN, FAIL = "ok", "warn", "fail"


@dataclass
class Check:
    """One finding: `name` (what was checked), `status` (ok|warn|fail), `summary` (one
    plain sentence), `details` (machine-readable facts, for --json)."""

    name: str
    status: str
    summary: str
    details: dict = field(default_factory=dict)


# ---- the checks ---------------------------------------------------------------------------
def check_version() -> Check:
    from edge_server.version import version

    v = version()
    py = ".".join(map(str, sys.version_info[:3]))
    return Check("earshot", OK, f"earshot {v} on Python {py} ({sys.executable})",
                 {"version": v, "python": py, "executable": sys.executable})


def check_onnxruntime() -> Check:
    from edge_server.engine import EngineError
    from edge_server.engine.runtime import import_onnxruntime, installed_flavours

    flavours = installed_flavours()
    try:
        ort = import_onnxruntime()
    except EngineError as exc:
        return Check("onnxruntime", FAIL, str(exc), {"flavours": flavours})
    providers = list(ort.get_available_providers())
    details = {"flavours": flavours, "version": ort.__version__, "providers": providers}
    if not flavours:
        return Check("onnxruntime", FAIL, "onnxruntime is importable but no onnxruntime "
                     "distribution is installed; reinstall earshot with the cpu or gpu extra",
                     details)
    gpu = "CUDAExecutionProvider" in providers
    words = (f"{flavours[0]} {ort.__version__}; providers: {', '.join(providers)}"
             + ("" if gpu else " (no CUDA: this box runs models on the CPU)"))
    return Check("onnxruntime", OK, words, details)


def check_models(settings: ServerSettings, served: tuple[str, ...],
                 cuda_listed: bool) -> list[Check]:
    """Each served model's form for the device the server would pick (as create_engine
    does: CUDA when asked, or on `auto` when the CUDA provider is listed), and the VAD."""
    from models import store
    from models.catalog import load_catalog

    catalog = load_catalog()
    device = "cuda" if settings.device == "cuda" or (
        settings.device == "auto" and cuda_listed) else "cpu"
    checks = []
    for model_id in (*served, catalog.default_vad):
        try:
            if catalog.get(model_id).kind == "asr" and hasattr(store, "require_form"):
                form = store.require_form(model_id, device=device)
                paths = {role: str(p) for role, p in form.paths.items()}
                words = f"{model_id}: {form.name} form ({device}) present and verified"
            else:
                folder = store.require_model(model_id)
                paths = {f.name: str(folder / f.name) for f in catalog.get(model_id).files}
                words = f"{model_id}: present and verified in {folder}"
        except (store.ModelNotReadyError, KeyError, ValueError) as exc:  # + unknown ids/forms
            checks.append(Check(f"model {model_id}", FAIL, str(exc), {"model": model_id}))
            continue
        checks.append(Check(f"model {model_id}", OK, words,
                            {"model": model_id, "files": paths}))
    return checks


def check_engine(settings: ServerSettings, model_id: str, cuda_listed: bool) -> Check:
    from edge_server.engine import EngineError, create_engine
    from models.store import ModelNotReadyError

    name = f"engine {model_id}"
    try:
        engine = create_engine(model_id, device=settings.device, threads=settings.threads)
    except (EngineError, ModelNotReadyError, OSError, ValueError) as exc:
        return Check(name, FAIL, f"{model_id} does not load on device "
                     f"'{settings.device}': {exc}", {"model": model_id})
    except Exception as exc:  # a diagnosis reports every failure instead of crashing
        return Check(name, FAIL, f"{model_id} does not load on device '{settings.device}' "
                     f"(internal error {type(exc).__name__}: {exc})", {"model": model_id})
    placement = getattr(engine, "placement", None)
    where = placement.summary() if placement is not None else f"provider {engine.provider}"
    details = {"model": model_id, "device": engine.device, "provider": engine.provider,
               "form": getattr(engine, "form", None), "placement": where}
    close = getattr(engine, "close", None)
    if callable(close):
        with contextlib.suppress(Exception):
            close()
    words = f"{model_id} runs on {engine.device.upper()}: {where}"
    if engine.device != "cuda" and cuda_listed and settings.device != "cpu":
        return Check(name, WARN, f"{words}. The CUDA provider is installed but this model "
                     "does not run on it (see the warning above for why)", details)
    return Check(name, OK, words, details)


def _earshot_answers(host: str, port: int) -> bool:
    """Whether an Earshot server answers /healthz on host:port (http or https)."""
    target = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE  # only asks "is it Earshot?", sends no secret
    for scheme in ("http", "https"):
        with contextlib.suppress(OSError, ValueError):
            url = f"{scheme}://{target}:{port}/healthz"
            with urllib.request.urlopen(url, timeout=2, context=insecure
                                        if scheme == "https" else None) as resp:
                if resp.status == 200:
                    return True
    return False


def check_port(host: str, port: int, what: str) -> Check:
    name = f"port {what}"
    details = {"host": host, "port": port}
    if port == 0:
        return Check(name, OK, f"{what}: port 0, a free port is picked at start", details)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind((host, port))
    except OSError as exc:
        details["error"] = exc.strerror or str(exc)
        if _earshot_answers(host, port):
            details["held_by"] = "earshot"
            return Check(name, OK, f"{what}: {host}:{port} is in use by a running Earshot "
                         "server (it answers /healthz)", details)
        return Check(name, FAIL, f"{what}: cannot bind {host}:{port} "
                     f"({details['error']}); another program holds it, or the address is "
                     "not on this machine", details)
    finally:
        sock.close()
    return Check(name, OK, f"{what}: {host}:{port} is free", details)


def check_lan(settings: ServerSettings) -> Check:
    """The mDNS record's addresses (what LAN clients are told), or why there are none."""
    from edge_server.lan.discovery import advertised_addresses, non_loopback_ipv4

    pinned = ([s.strip() for s in settings.mdns_interfaces.split(",") if s.strip()]
              if isinstance(settings.mdns_interfaces, str)
              else list(settings.mdns_interfaces or []))
    interfaces = non_loopback_ipv4()
    details = {"interfaces": interfaces, "pinned": pinned, "enabled": bool(settings.mdns)}
    if not settings.mdns:
        return Check("mdns", OK, "mDNS advertising is off (--no-mdns): clients need the "
                     "address typed in", details)
    addresses = advertised_addresses(settings.host, pinned or None)
    details["advertised"] = addresses
    if not addresses:
        why = ("it listens on the loopback only (use --host 0.0.0.0 for the LAN)"
               if settings.host in ("127.0.0.1", "localhost", "::1")
               else "this machine has no non-loopback IPv4 address")
        return Check("mdns", WARN, f"nothing to advertise on the LAN: {why}", details)
    return Check("mdns", OK, f"would advertise _earshot._tcp.local. on "
                 f"{', '.join(addresses)} (interfaces: {', '.join(interfaces) or 'none'})",
                 details)


def check_token(settings: ServerSettings) -> Check:
    from edge_server.lan.auth import default_token_file

    if settings.token:
        return Check("token", OK, "a token is given in the settings (not from a file)",
                     {"source": "settings", "auth": settings.auth})
    path = Path(settings.token_file) if settings.token_file else default_token_file()
    details = {"path": str(path), "auth": settings.auth}
    who = {"remote": "clients on other hosts must present it",
           "all": "every client must present it",
           "none": "no client needs it (--auth none: anyone who reaches the port may use it)"}
    if not path.exists():
        return Check("token", OK, f"no token file yet at {path}: the server creates one on "
                     f"its first start ({who.get(settings.auth, '')})", details)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        return Check("token", FAIL, f"token file {path} is unreadable: {exc.strerror}", details)
    details["mode"] = f"{mode:04o}"
    if not token:
        return Check("token", FAIL, f"token file {path} is empty: run "
                     "`earshot-server token --rotate`", details)
    status = WARN if settings.auth == "none" else OK
    if mode & 0o077:
        return Check("token", WARN, f"token file {path} is readable by others "
                     f"(mode {mode:04o}); chmod 600 it", details)
    return Check("token", status, f"token file {path} (mode {mode:04o}); "
                 f"{who.get(settings.auth, '')}", details)


def check_tls(settings: ServerSettings) -> Check:
    from cryptography import x509

    from edge_server.lan.identity import (
        CERT_FILE,
        ID_FILE,
        KEY_FILE,
        certificate_fingerprint,
        default_state_dir,
        format_fingerprint,
    )

    if settings.tls_cert or settings.tls_key:
        if not (settings.tls_cert and settings.tls_key):
            return Check("tls", FAIL, "--tls-cert and --tls-key go together", {})
        cert_path, key_path = Path(settings.tls_cert), Path(settings.tls_key)
        source = "the admin's certificate (--tls-cert)"
        server_id = None
    else:
        folder = Path(settings.state_dir) if settings.state_dir else default_state_dir()
        cert_path, key_path = folder / CERT_FILE, folder / KEY_FILE
        source = f"the server's own identity in {folder}"
        if not cert_path.exists():
            return Check("tls", OK, f"no identity yet in {folder}: the server creates its id "
                         "and certificate on its first start", {"state_dir": str(folder)})
        server_id = (folder / ID_FILE).read_text(errors="replace").strip() \
            if (folder / ID_FILE).exists() else None
    details = {"certificate": str(cert_path), "key": str(key_path), "server_id": server_id}
    try:
        pem = cert_path.read_bytes()
        fingerprint = certificate_fingerprint(pem)
        cert = x509.load_pem_x509_certificate(pem)
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert_path, key_path)
    except (OSError, ValueError, ssl.SSLError) as exc:
        return Check("tls", FAIL, f"{source} is unusable ({exc}): run "
                     "`earshot-server identity --rotate-identity` or fix --tls-cert/--tls-key",
                     details)
    expires = cert.not_valid_after_utc
    details.update(fingerprint=fingerprint, expires=expires.isoformat())
    if expires <= datetime.now(UTC):
        return Check("tls", FAIL, f"{source}: the certificate expired on "
                     f"{expires.date()}", details)
    who = f"server id {server_id}, " if server_id else ""
    return Check("tls", OK, f"{source}: {who}fingerprint {format_fingerprint(fingerprint)}, "
                 f"valid until {expires.date()}", details)


# ---- the command --------------------------------------------------------------------------
def run_checks(settings: ServerSettings, engines: bool = True) -> list[Check]:
    """Every check, in the order of the module docstring."""
    checks = [check_version(), check_onnxruntime()]
    try:
        served = served_models(settings)
    except ValueError as exc:
        return [*checks, Check("models", FAIL, str(exc))]
    cuda = "CUDAExecutionProvider" in checks[1].details.get("providers", [])
    checks += check_models(settings, served, cuda)
    runtime_ok = checks[1].status != FAIL
    if engines and runtime_ok and not settings.noop_engine:
        for model_id in served:
            if all(c.status == OK for c in checks if c.details.get("model") == model_id):
                checks.append(check_engine(settings, model_id, cuda))
    checks.append(check_port(settings.host, settings.port, "http"))
    if settings.wyoming:
        checks.append(check_port(settings.wyoming_host or settings.host,
                                 settings.wyoming_port, "wyoming"))
    checks += [check_lan(settings), check_token(settings), check_tls(settings)]
    return checks


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="earshot-server doctor",
                                description="What this box has, in plain words.")
    p.add_argument("--config", type=Path, help="the server's TOML settings file")
    p.add_argument("--host", help="address the server binds (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="HTTP port (default 8765)")
    p.add_argument("--model", metavar="ID[,ID]", help="served model id(s)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="inference device")
    p.add_argument("--threads", type=int, help="onnxruntime threads per engine")
    p.add_argument("--token-file", help="the server's token file")
    p.add_argument("--state-dir", help="the server's identity folder")
    p.add_argument("--tls-cert", help="PEM certificate the server serves")
    p.add_argument("--tls-key", help="PEM key of --tls-cert")
    p.add_argument("--mdns-interfaces", metavar="IP[,IP]")
    p.add_argument("--no-mdns", dest="mdns", action="store_false", default=None)
    p.add_argument("--wyoming", action="store_true", default=None)
    p.add_argument("--no-engine", action="store_true",
                   help="skip loading the models (faster; no device check)")
    p.add_argument("--json", action="store_true", help="one JSON object instead of text")
    return p


def render_text(checks: list[Check]) -> str:
    mark = {OK: "ok  ", WARN: "WARN", FAIL: "FAIL"}
    lines = [f"[{mark[c.status]}] {c.name}: {c.summary}" for c in checks]
    failed = [c.name for c in checks if c.status == FAIL]
    lines.append("doctor: " + (f"{len(failed)} problem(s) to fix: {', '.join(failed)}"
                               if failed else "nothing is broken"))
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items()
                 if k not in ("config", "json", "no_engine")}
    try:
        settings = load_settings(args.config, overrides)
        if args.model:
            settings = replace(settings, models=())
    except (OSError, ValueError) as exc:
        print(f"earshot-server doctor: error: {exc}", file=sys.stderr)
        return 2
    checks = run_checks(settings, engines=not args.no_engine)
    failed = any(c.status == FAIL for c in checks)
    if args.json:
        print(json.dumps({"ok": not failed, "checks": [asdict(c) for c in checks]}, indent=2))
    else:
        print(render_text(checks))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
