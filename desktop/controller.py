"""The desktop app's brain: capture -> journal + dictation (network, failover) -> UI + history.

`DictationController` is a QObject living on the GUI thread. It starts the embedded local
server, chooses endpoints (a configured remote server first when healthy, the local
server last), and runs one `Dictation` at a time on a `LoopThread`. Nothing that waits on
the network runs on the GUI thread: probes and connecting happen on the loop, and their
outcome comes back as queued signals. Audio arrives on the capture source's thread: it is
journaled there and handed to the loop; results come back from the loop as queued Qt
signals, so slots (history writes, widgets) run on the GUI thread.

Model choice: `model` is the user's pick (None: each server's default). The embedded
server serves the picked model (`set_model` restarts it, after the dictation running
then); a remote server is asked for it only when it serves it (its `/healthz` models, seen
when it was probed), else it decodes with its own default. Which models a server serves
(`models_available`) and which one the server in use runs (`model_in_use`, from its
`ready`) are signalled.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np
from PySide6.QtCore import QObject, QTimer, Signal

from desktop.capture import AudioSource, CaptureError, level_dbfs
from desktop.dictation import Dictation, DictationFailed, DictationListener, Endpoint, FinalText
from desktop.embedded_server import EmbeddedServer
from desktop.history import History
from desktop.journal import Journal, JournalWriter
from desktop.lan import trust
from desktop.lan.credentials import CredentialStore
from desktop.lan.discovery import DiscoveredServer, browse, mdns_interfaces
from desktop.lan.pairing import (
    PairingError,
    VerifiedServer,
    is_plain_remote,
    pair,
    probe,
    remember,
)
from desktop.lan.pins import PinStore
from desktop.lan.trust import url_token_key
from desktop.loop_thread import LoopThread
from desktop.stream_client import StreamClient

log = logging.getLogger(__name__)
LOCAL_NAME = "This computer"


@dataclass(frozen=True)
class ServerChoice:
    """Where dictation goes first; the embedded local server is always the fallback.

    "auto": the best discovered server that `desktop.lan.trust` allows (this machine's, or
    paired ones presenting their pinned certificate; GPU first, then most free capacity),
    else local; "remote": `url` (pinned and with the stored token when it was paired;
    `token` overrides); "local".
    """

    mode: str = "auto"  # "auto" | "local" | "remote"
    url: str | None = None
    token: str | None = None


class _Bridge(DictationListener):
    """Forwards Dictation callbacks (loop thread) to the controller's signals."""

    def __init__(self, controller: DictationController) -> None:
        self.c = controller

    def on_partial(self, text: str) -> None:
        self.c.partial.emit(text)

    def on_final(self, final: FinalText) -> None:
        self.c.final.emit(final.index, final.start, final.end, final.text, final.error or "")

    def on_state(self, state: str, endpoint: Endpoint | None, detail: str = "") -> None:
        name = endpoint.name if endpoint else ""
        device = (endpoint.device or "") if endpoint else ""
        self.c.state.emit(state, name, device, detail)
        if endpoint is not None and state in ("connected", "fallback"):
            self.c.connected_to(endpoint)

    def on_latency(self, endpoint: Endpoint, milliseconds: float) -> None:
        self.c.latency.emit(endpoint.name, endpoint.device or "", milliseconds)


class DictationController(QObject):
    partial = Signal(str)
    final = Signal(int, float, float, str, str)  # index, start, end, text, error
    state = Signal(str, str, str, str)  # state, server name, device, detail
    level = Signal(float)  # dBFS of the latest chunk
    latency = Signal(str, str, float)  # server name, device, round trip in ms
    recording = Signal(bool)
    finished = Signal(int)  # dictation id in the history
    failed = Signal(str)  # a message for the user
    local_server = Signal(str)  # embedded server status: starting | ready | failed: ...
    servers_found = Signal(list)  # list[DiscoveredServer], best first
    trust_warning = Signal(str)  # a server refused as an impostor, an insecure token store
    start_failed = Signal(str)  # a start() that did not connect (after `failed`)
    audio_lost = Signal(float)  # ms of audio the sound system lost in this dictation (silence)
    models_available = Signal(str, list)  # server name, the models it serves (default first)
    model_in_use = Signal(str, str)  # server name, the model it decodes this dictation with
    _source_ended = Signal(object)  # from the capture thread: the AudioSource that ended
    _finish_done = Signal(int, bool)  # from the loop thread: dictation id, all transcribed
    _start_result = Signal(object, str, str)  # from the loop: Dictation, server name, error

    def __init__(self, history: History, journal: Journal, model: str | None = None,
                 pins: PinStore | None = None,
                 credentials: CredentialStore | None = None) -> None:
        super().__init__()
        self.history = history
        self.journal = journal
        self.loop = LoopThread()
        self.model = model  # the user's pick; None: each server's default
        self.embedded = EmbeddedServer(model=model)
        self._served: dict[str, tuple[str, ...]] = {}  # server url -> models it serves
        self._clients: dict[str, StreamClient] = {}  # server url -> its latest client
        self._restart_local = False  # set_model during a dictation: restart afterwards
        self.choice = ServerChoice()
        self.dictation: Dictation | None = None
        self.dictation_id: int | None = None
        self.source: AudioSource | None = None
        self.writer: JournalWriter | None = None
        self.samples = 0
        self.overruns = 0
        self.lost_ms = 0.0  # audio the sound system lost in the current dictation
        self.last_complete = True  # whether the last dictation got text for every segment
        self.choose_timeout_s = 10.0  # probing candidate servers, at start
        self.start_timeout_s = 15.0  # connecting to one of them, at start
        self._title: str | None = None
        self._connected = False
        self._start_future: Future | None = None
        self._started_at = 0.0
        self._stopping = False
        self._source_ended.connect(self._on_source_ended)
        self._finish_done.connect(self._complete)
        self._start_result.connect(self._on_start_result)
        self.final.connect(self._store_final)
        self._poll = QTimer(self)
        self._poll.timeout.connect(self._check_embedded)
        self.discovered: list[DiscoveredServer] = []
        self.pins = pins or PinStore()
        self.credentials = credentials or CredentialStore()
        self.warnings: list[str] = []  # every trust warning shown so far, newest last
        self._warn_lock = threading.Lock()  # warn() is called from the GUI and loop threads
        self._discovery = None

    # ---- LAN discovery -----------------------------------------------------------------------
    def start_discovery(self, every_s: float = 8.0) -> None:
        """Browse for servers in the background, now and every `every_s` seconds."""
        if self._discovery is None:
            self._discovery = self.loop.submit(self._discover_forever(every_s))

    async def _discover_forever(self, every_s: float) -> None:
        while True:
            try:
                found = await browse(timeout=1.5, interfaces=mdns_interfaces())
                warnings = (await asyncio.to_thread(
                    trust.automatic, found, self.pins, self.credentials))[1]
            except Exception as exc:  # no usable interface, a broken keyring: stay local
                log.info("discovery unavailable: %s", exc)
                found, warnings = [], []
            self.discovered = found
            for server in found:  # the TXT record's `models`, until a probe or ready says
                if server.models and server.url not in self._served:
                    self._served[server.url] = server.models
            self.servers_found.emit(found)
            for warning in warnings:
                self.warn(warning)
            await asyncio.sleep(every_s)

    def warn(self, message: str) -> None:
        """Tell the user once (any thread): an impostor refused, tokens stored insecurely."""
        with self._warn_lock:
            if message in self.warnings:
                return
            self.warnings.append(message)
        log.warning("%s", message)
        self.trust_warning.emit(message)

    def assessment(self, server: DiscoveredServer) -> trust.Assessment:
        return trust.assess(server, self.pins, self.credentials)

    # ---- pairing -----------------------------------------------------------------------------
    def pair(self, url: str, token: str | None, expected_fingerprint: str | None = None,
             expected_id: str | None = None) -> Future:
        """Verify and pin a server on the loop thread; the future gives a VerifiedServer or
        raises PairingError. The token is stored (keyring) only once the server proved it."""
        async def run() -> VerifiedServer:
            verified = await pair(url, token, expected_fingerprint=expected_fingerprint,
                                  expected_id=expected_id)
            remember(verified, token, self.pins, self.credentials)
            if token and not verified.fingerprint:  # loopback http: found again by address
                self.credentials.set(url_token_key(verified.url), token)
            if self.credentials.warning:
                self.warn(self.credentials.warning)
            return verified

        return self.loop.submit(run())

    # ---- model choice ------------------------------------------------------------------------
    @staticmethod
    def installed_models() -> list[str]:
        """Speech models installed on this computer (the embedded server can serve them),
        the catalog's default first."""
        from models.catalog import load_catalog
        from models.store import ModelNotReadyError, require_form

        catalog = load_catalog()
        ids = sorted((m for m, s in catalog.models.items() if s.kind == "asr"),
                     key=lambda m: (m != catalog.default_asr, m))

        def ready(model_id: str) -> bool:  # the files the embedded server's CPU form loads
            try:
                require_form(model_id, device="cpu")
            except (ModelNotReadyError, KeyError):
                return False
            return True

        return [m for m in ids if ready(m)]

    def local_model(self) -> str:
        """The model the embedded server serves: the pick when it is installed here, else
        the catalog's default."""
        from models.catalog import load_catalog

        if self.model and self.model in self.installed_models():
            return self.model
        return load_catalog().default_asr

    def embedded_model(self) -> str:
        """The model the embedded server (as started) serves."""
        from models.catalog import load_catalog

        return self.embedded.settings.model or load_catalog().default_asr

    def set_model(self, model: str | None) -> None:
        """Pick the model (GUI thread). The embedded server is restarted to serve it, at once
        when no dictation runs, else when it has finished; remote servers get it in the
        next dictation's `hello` when they serve it."""
        if model == self.model:
            return
        self.model = model
        if self.embedded_model() == self.local_model():
            return
        if self.dictation is not None:
            self._restart_local = True
        else:
            self._restart_embedded()

    def _restart_embedded(self) -> None:
        """Replace the embedded server by one serving `model`; the old one stops in the
        background (it drains for up to 10 s; the GUI thread never waits for it)."""
        self._restart_local = False
        old = self.embedded
        self.embedded = EmbeddedServer(model=self.local_model())
        if old.status != "stopped":
            threading.Thread(target=old.stop, name="embedded-server-stop", daemon=True).start()
            self.start_local_server()

    def served_models(self, url: str) -> tuple[str, ...]:
        """Models a server was seen to serve (probe, or ready), default first; () unknown."""
        return self._served.get(url, ())

    def _model_for(self, url: str) -> str | None:
        """What a stream to `url` asks for: the pick when that server serves it, else None
        (the server's default)."""
        return self.model if self.model and self.model in self.served_models(url) else None

    def _make_client(self, url: str, **kwargs) -> StreamClient:
        """Dictation's client factory (loop thread): a StreamClient asking for the model."""
        client = StreamClient(url, model=self._model_for(url), **kwargs)
        self._clients[url] = client
        return client

    def connected_to(self, endpoint: Endpoint) -> None:
        """A dictation's stream is open on `endpoint` (loop thread): tell which model the
        server decodes with and which it serves."""
        client = self._clients.get(endpoint.url)
        served = client.server.get("models") if client is not None else None
        if served:
            self._served[endpoint.url] = tuple(served)
            self.models_available.emit(endpoint.name, list(served))
        if client is not None and client.model_used:
            self.model_in_use.emit(endpoint.name, client.model_used)

    def _remember_served(self, url: str, health: dict | None) -> None:
        models = ((health or {}).get("server") or {}).get("models")
        if models:
            self._served[url] = tuple(models)

    # ---- embedded server -------------------------------------------------------------------
    def start_local_server(self) -> None:
        self.embedded.start()
        self.local_server.emit("starting")
        self.models_available.emit(LOCAL_NAME, self.installed_models())
        self._poll.start(100)

    def _check_embedded(self) -> None:
        if self.embedded.status != "starting":
            self._poll.stop()
            self.local_server.emit(self.embedded.status)

    def local_endpoint(self) -> Endpoint | None:
        if self.embedded.status != "ready" or self.embedded.url is None:
            return None
        self._served[self.embedded.url] = (self.embedded_model(),)
        return Endpoint(LOCAL_NAME, self.embedded.url, self.embedded.token, "cpu", local=True)

    async def choose_endpoints(self) -> list[Endpoint]:
        """The chosen or best trusted server when healthy right now, then the local one.
        Runs on the loop thread (probes go over the network)."""
        out: list[Endpoint] = []
        if self.choice.mode == "auto":
            usable, warnings = await asyncio.to_thread(
                trust.automatic, self.discovered, self.pins, self.credentials)
            for warning in warnings:
                self.warn(warning)
            for a in usable:
                try:
                    health = await probe(a.server.url, a.fingerprint)
                except PairingError as exc:
                    self.warn(str(exc))
                    continue
                if health is not None:
                    self._remember_served(a.server.url, health)
                    out.append(Endpoint(a.server.name, a.server.url, a.token, a.server.device,
                                        fingerprint=a.fingerprint))
                    break
        if self.choice.mode == "remote" and self.choice.url:
            url = self.choice.url
            if is_plain_remote(url):  # audio in clear was the user's choice; a token never is
                self.warn(f"{url} is plain http on another host: no token is sent to it "
                          "(use https:// and pair with it)")
                pin, fingerprint, token = None, None, None
            else:
                pin = await asyncio.to_thread(self.pins.find_by_url, url)
                fingerprint = pin.fingerprint if pin else None
                token = self.choice.token or await asyncio.to_thread(
                    self.credentials.get, pin.server_id if pin else url_token_key(url))
            try:
                health = await probe(self.choice.url, fingerprint)
            except PairingError as exc:
                self.warn(str(exc))
                health = None
            if health is not None:
                self._remember_served(self.choice.url, health)
                server = health.get("server", {})
                name = pin.name if pin else self.choice.url.split("//")[-1]
                out.append(Endpoint(name, self.choice.url, token, server.get("device"),
                                    fingerprint=fingerprint))
        local = self.local_endpoint()
        if local is not None:
            out.append(local)
        return out

    # ---- dictation -------------------------------------------------------------------------
    @property
    def is_recording(self) -> bool:
        """True from an accepted start() until `finished` or `start_failed`: connecting,
        capturing or finishing."""
        return self.dictation is not None

    @property
    def is_connecting(self) -> bool:
        """True while a started dictation is still choosing and connecting to a server."""
        return self.dictation is not None and not self._connected

    def start(self, source: AudioSource, title: str | None = None) -> bool:
        """Begin a dictation from `source`. GUI thread; returns at once, blocking on nothing.

        False when a dictation is already running (no signal), or when the source cannot
        start (`failed`, then `start_failed`, emitted before it returns). Otherwise capture
        begins now -- journaled and buffered, so what is said while connecting is kept --
        and the servers are probed and connected on the loop thread; the outcome arrives
        later as a queued signal: `recording(True)`, or `failed(message)` then
        `start_failed(message)`. A start that has no server within `choose_timeout_s`
        (choosing) + `start_timeout_s` (connecting) is cancelled: its tasks and connections
        are closed, capture stops, its journal entry is deleted (no history row exists
        before it connects).
        """
        if self.dictation is not None:
            return False
        self.writer = self.journal.open(uuid.uuid4().hex)
        self.dictation = Dictation(None, _Bridge(self), client_factory=self._make_client)
        self.dictation_id = None
        self._title = title
        self._connected = False
        self._stopping = False
        self.samples = 0
        self.overruns = 0
        self.lost_ms = 0.0
        self._started_at = time.monotonic()
        self.source = source
        writer, dictation = self.writer, self.dictation
        try:  # callbacks bound to this dictation: a late one from an older source is ignored
            source.start(lambda chunk: self._on_audio(chunk, source, writer, dictation),
                         lambda: self._source_ended.emit(source))
        except CaptureError as exc:
            self._abandon_start(str(exc))
            return False
        self.state.emit("connecting", "", "", "choosing a server")
        self._start_future = self.loop.submit(self._connect(self.dictation))
        return True

    async def _connect(self, dictation: Dictation) -> None:
        """Loop thread: choose the endpoints and connect, within the time limits; report
        the outcome with `_start_result` (before any final of the dictation is emitted)."""
        try:
            try:
                endpoints = await asyncio.wait_for(self.choose_endpoints(),
                                                   self.choose_timeout_s)
            except Exception as exc:  # a slow probe, a broken keyring: this computer still works
                log.warning("choosing a server failed (%r): using this computer", exc)
                endpoints = [e for e in [self.local_endpoint()] if e is not None]
            if not endpoints:
                raise DictationFailed("No server is ready yet: the local model is still "
                                      "loading, or it failed (see the status line).")
            await asyncio.wait_for(dictation.start(endpoints), self.start_timeout_s)
        except asyncio.CancelledError:
            await dictation.abort()
            raise
        except Exception as exc:
            await dictation.abort()
            if isinstance(exc, TimeoutError):
                message = (f"Could not start: no server answered within "
                           f"{self.start_timeout_s:g} s.")
            elif isinstance(exc, DictationFailed) and str(exc).startswith("No server"):
                message = str(exc)
            else:
                message = f"Could not start: {exc}"
            self._start_result.emit(dictation, "", message)
            return
        endpoint = dictation.endpoint
        self._start_result.emit(dictation, endpoint.name if endpoint else "?", "")

    def _on_start_result(self, dictation: Dictation, server: str, error: str) -> None:
        if dictation is not self.dictation:
            return  # shut down meanwhile
        if error:
            self._abandon_start(error)
            return
        self._connected = True
        assert self.writer is not None
        self.dictation_id = self.history.start_dictation(
            title=self._title, server=server, audio_path=str(self.writer.entry.pcm_path))
        self.recording.emit(True)
        if self._stopping:  # stopped (or the file ended) while connecting
            self._finish()

    def _abandon_start(self, message: str) -> None:
        """A start that did not connect: stop capture, delete its journal entry, say why."""
        source, writer = self.source, self.writer
        self.dictation = None
        self.source = None
        self.writer = None
        self.dictation_id = None
        if source is not None:
            source.stop()
        if writer is not None:
            writer.close(status=None)
            self.journal.discard(writer.entry.id)
        self.failed.emit(message)
        self.start_failed.emit(message)

    def _on_audio(self, chunk: np.ndarray, source: AudioSource, writer: JournalWriter,
                  dictation: Dictation) -> None:  # capture thread
        if source is not self.source:
            return  # an abandoned dictation's source, still winding down
        try:
            writer.append(chunk)
        except ValueError:  # closed meanwhile: the dictation was abandoned
            return
        self.samples += len(chunk)
        self.loop.call(dictation.feed, chunk)
        self.level.emit(level_dbfs(chunk))
        if source.lost_ms != self.lost_ms:
            self.lost_ms = source.lost_ms
            self.overruns = source.overruns
            self.audio_lost.emit(self.lost_ms)

    def _on_source_ended(self, source: AudioSource) -> None:
        if source is self.source:  # not a late end of an abandoned dictation's source
            self.stop()

    def stop(self) -> None:
        """Stop capturing and finish the dictation (results keep arriving until `finished`).
        While still connecting, capture stops now and the dictation finishes once connected."""
        if self.dictation is None or self._stopping:
            return
        self._stopping = True
        if self.source is not None:
            self.source.stop()
            self.overruns = self.source.overruns
            self.lost_ms = self.source.lost_ms
        if self._connected:
            self._finish()

    def _finish(self) -> None:
        dictation, dictation_id = self.dictation, self.dictation_id
        assert dictation is not None
        future = self.loop.submit(dictation.finish())
        future.add_done_callback(lambda f: self._finish_done.emit(
            dictation_id, not f.cancelled() and f.exception() is None and dictation.complete))

    def _store_final(self, index: int, start: float, end: float, text: str, error: str) -> None:
        if self.dictation_id is not None:
            self.history.add_segment(self.dictation_id, index, start, end, text)

    def _complete(self, dictation_id: int, ok: bool) -> None:
        """The dictation is over. The journal is marked "done" only when every segment got
        text; otherwise it stays "recording", so the audio is offered for recovery."""
        dictation = self.dictation
        duration = self.samples / 16_000
        if self.writer is not None:
            self.writer.close(status="done" if ok else "recording")
        self.history.finish(dictation_id, duration)
        self.dictation = None
        self.dictation_id = None
        self.writer = None
        self.source = None
        self.last_complete = ok
        self.recording.emit(False)
        if self._restart_local:  # the model was changed during this dictation
            self._restart_embedded()
        if not ok:
            failed = dictation.failed_segments if dictation is not None else 0
            what = (f"{failed} segment(s) could not be transcribed by any server"
                    if failed else "Some audio could not be transcribed")
            self.failed.emit(f"{what}; the audio is kept in the journal and offered for "
                             "recovery at the next start.")
        self.finished.emit(dictation_id)

    def shutdown(self) -> None:
        if self._discovery is not None:
            self._discovery.cancel()
        if self._start_future is not None:
            self._start_future.cancel()
        if self.source is not None:
            self.source.stop()
        self.embedded.stop()
        self.loop.stop()

