"""Server settings: defaults, a TOML config file, and command-line overrides."""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from edge_server.partial_policy import check_partial_settings
from edge_server.segmenter import SegmenterConfig

# loopback and private LAN ranges: Wyoming has no token, so it is open to these only
WYOMING_ALLOW = ("127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12",
                 "192.168.0.0/16", "169.254.0.0/16", "fc00::/7", "fe80::/10")
LIST_KEYS = ("mdns_interfaces", "wyoming_allow", "trusted_proxies")  # TOML list or "a,b" -> tuple


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8765
    model: str | None = None  # served model ids, comma-separated (the first is the default)
    models: tuple[str, ...] = ()  # the same as a list (config `models = [...]`); wins over model
    device: str = "auto"
    workers: int = 1
    threads: int | None = None
    token: str | None = None  # default: the token file's (created on first start)
    token_file: str | None = None  # default: auth.default_token_file()
    auth: str = "remote"  # remote (loopback needs no token) | all | none
    max_auth_failures: int = 10  # failed attempts per address within auth_window_s ...
    auth_window_s: float = 60.0
    auth_lockout_s: float = 60.0  # ... lock the address out this long
    tls_cert: str | None = None  # PEM certificate chain (default: the identity's own)
    tls_key: str | None = None
    state_dir: str | None = None  # server id + identity certificate (lan.identity)
    allow_plain_lan: bool = False  # accept plain http/ws from other hosts (logged opt-out)
    trusted_proxies: tuple[str, ...] = ()  # reverse proxies whose forwarding headers count
    noop_engine: bool = False  # no inference at all: measures the server's own overhead
    queue: str | None = None  # redis://... : decode through Redis Streams (edge_server/queue)
    queue_results_ttl_s: float = 60.0  # a dead gateway's result stream expires after this
    max_sessions: int = 64
    max_batch: int = 16
    max_wait_ms: float = 10.0
    partial_interval_ms: int = 400
    degrade_after_s: float = 0.8  # partials pause while a final has waited this long
    # -- partials: cost and shedding (edge_server/partial_policy.py) --
    degrade_recover_s: float = 0.4  # ... and resume once that wait stayed below this
    degrade_hold_s: float = 2.0  # ... for this long (hysteresis: no flapping)
    partial_chunk_s: float = 8.0  # partials decode ~this much audio: chunks cut at pauses
    partial_min_chunk_s: float = 4.0  # shortest chunk committed
    partial_max_chunk_s: float = 12.0  # ... and the longest, when speech has no pause
    partial_min_tail_ms: int = 300  # a shorter uncommitted tail is not decoded alone
    partial_need_speech: bool = True  # no partial when only silence arrived since the last
    # -- end of partials block --
    partial_budget_s: float = 3.0  # most audio seconds of partials decoded in one batch
    overload_after_s: float = 2.0  # new sessions refused while a final has waited this long
    max_session_rows: int = 4  # a session's rows in one batch while other sessions wait
    backlog_batch_s: float = 1.0  # decode time of a batch of backlogs while others are live
    batch_deadline_floor_s: float = 5.0  # a batch may always run this long before it is
    batch_deadline_cap_s: float = 20.0  # ... killed as hung, never longer than this; in
    batch_deadline_factor: float = 4.0  # ... between: this many times its measured cost
    resume_grace_s: float = 60.0
    handshake_timeout_s: float = 10.0
    idle_timeout_s: float = 120.0
    max_frame_ms: int = 2000  # largest audio frame accepted
    max_realtime_factor: float = 100.0  # audio faster than this times real time is refused
    max_connections_per_ip: int = 600
    max_pending_finals: int = 32  # a session's queued finals before its reads pause
    max_send_queue_kb: int = 1024  # unsent messages per connection before 4419 (too slow)
    retry_after_s: int = 5
    log_json: bool = False
    mdns: bool = True  # advertise as _earshot._tcp.local.
    mdns_interfaces: tuple[str, ...] | None = None  # None: every interface
    name: str | None = None  # advertised name (default: the host name)
    max_clip_jobs: int = 8  # uploads / Wyoming utterances transcribed at once
    clip_budget_s: float = 60.0  # most clip audio seconds decoded in one batch
    max_upload_mb: float = 100.0  # largest file accepted by /v1/audio/transcriptions
    max_upload_audio_s: float = 14400.0  # longest audio (decoded) of one upload: 4 h
    upload_idle_timeout_s: float = 60.0  # an upload body silent this long: 408
    upload_decode_timeout_s: float = 30.0  # upload decoder: hung after this long without
    # audio; CPU seconds allowed: this + 10 per MB of file (at most 600)
    wyoming: bool = False  # also serve the Wyoming protocol (Home Assistant)
    wyoming_host: str | None = None  # default: the HTTP host
    wyoming_port: int = 10300
    wyoming_allow: tuple[str, ...] = WYOMING_ALLOW  # networks that may connect (no token!)
    max_utterance_s: float = 300.0  # longest Wyoming utterance accepted (audio seconds)
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)


SEGMENTER_KEYS = {f.name for f in fields(SegmenterConfig)}


def _check_networks(value: object, key: str) -> None:
    """Raise ValueError unless `value` is a tuple of IP networks ("10.0.0.0/8", "::1")."""
    if not isinstance(value, tuple):
        raise ValueError(f"{key} must be a list of networks")
    for net in value:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError as exc:
            raise ValueError(f"{key}: {exc}") from None


def load_settings(path: Path | None, overrides: dict) -> ServerSettings:
    """Defaults <- TOML file (flat keys; segmenter keys under [segmenter]) <- overrides."""
    data: dict = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ValueError(f"config file {path}: {exc}") from None
    seg = dict(data.pop("segmenter", {}))
    known = {f.name for f in fields(ServerSettings)} - {"segmenter"}
    unknown = (set(data) - known) | (set(seg) - SEGMENTER_KEYS)
    if unknown:
        raise ValueError(f"config file {path}: unknown key(s) {', '.join(sorted(unknown))}")
    data.update({k: v for k, v in overrides.items() if v is not None and k in known})
    seg.update({k: v for k, v in overrides.items() if v is not None and k in SEGMENTER_KEYS})
    for key in LIST_KEYS:
        if isinstance(data.get(key), (list, str)):
            value = data[key]
            items = value.split(",") if isinstance(value, str) else value
            data[key] = tuple(str(i).strip() for i in items if str(i).strip())
    _check_networks(data.get("wyoming_allow", ()), "wyoming_allow")
    _check_networks(data.get("trusted_proxies", ()), "trusted_proxies")
    settings = replace(ServerSettings(), **data)
    settings = replace(settings, segmenter=replace(settings.segmenter, **seg))
    check_partial_settings(settings)  # ValueError naming the inconsistent settings
    ttl = settings.queue_results_ttl_s  # (the gateway refreshes it every third of it)
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not ttl >= 1.0:
        raise ValueError(f"queue_results_ttl_s must be a number of seconds, at least 1, not "
                         f"{settings.queue_results_ttl_s!r}")
    return settings


class UnknownServedModel(ValueError):
    """A client asked for a model this server does not serve (the message lists them)."""

    def __init__(self, name: str, served: tuple[str, ...]) -> None:
        super().__init__(f"model {name[:64]!r} is not served here (served: "
                         f"{', '.join(served)})")
        self.name = name
        self.served = served


def served_models(settings: ServerSettings) -> tuple[str, ...]:
    """The model ids a server serves, the default first: `models` (a list, or "a,b"), else
    `model` ("a" or "a,b"), else the catalog's default. With the no-op engine and nothing
    asked: ("noop",). Raises ValueError for an id the catalog does not list (naming the
    catalog's speech models), for a model that is not a speech recognizer, or for a repeat."""
    from models.catalog import load_catalog

    raw: object = settings.models or settings.model or ""
    items = raw.split(",") if isinstance(raw, str) else list(raw)  # type: ignore[arg-type]
    ids = tuple(str(i).strip() for i in items if str(i).strip())
    catalog = load_catalog()
    if not ids:
        return ("noop",) if settings.noop_engine else (catalog.default_asr,)
    asr = sorted(m for m, spec in catalog.models.items() if spec.kind == "asr")
    for model_id in ids:
        if model_id not in asr:
            raise ValueError(f"unknown model '{model_id}' (the catalog's speech models: "
                             f"{', '.join(asr)})")
    if len(set(ids)) != len(ids):
        raise ValueError(f"a model is listed twice: {', '.join(ids)}")
    return ids
