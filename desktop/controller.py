"""The desktop app's brain: capture -> journal + dictation (network, failover) -> UI + history.

`DictationController` is a QObject living on the GUI thread. It starts the embedded local
server, chooses endpoints (a configured remote server first when healthy, the local
server last), and runs one `Dictation` at a time on a `LoopThread`. Audio arrives on the
capture source's thread: it is journaled there and handed to the loop; results come back
from the loop as queued Qt signals, so slots (history writes, widgets) run on the GUI thread.
"""

from __future__ import annotations

import asyncio
import logging
import os
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
from desktop.lan.discovery import DiscoveredServer, browse
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


def mdns_interfaces() -> list[str] | None:
    """EARSHOT_MDNS_INTERFACES (comma-separated addresses) pins discovery; unset: all."""
    value = os.environ.get("EARSHOT_MDNS_INTERFACES", "")
    return [v.strip() for v in value.split(",") if v.strip()] or None


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
    _source_ended = Signal()
    _finish_done = Signal(int, bool)  # from the loop thread: dictation id, all transcribed

    def __init__(self, history: History, journal: Journal, model: str | None = None,
                 pins: PinStore | None = None,
                 credentials: CredentialStore | None = None) -> None:
        super().__init__()
        self.history = history
        self.journal = journal
        self.loop = LoopThread()
        self.embedded = EmbeddedServer(model=model)
        self.choice = ServerChoice()
        self.dictation: Dictation | None = None
        self.dictation_id: int | None = None
        self.source: AudioSource | None = None
        self.writer: JournalWriter | None = None
        self.samples = 0
        self.overruns = 0
        self._started_at = 0.0
        self._stopping = False
        self._source_ended.connect(self.stop)
        self._finish_done.connect(self._complete)
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

    # ---- embedded server -------------------------------------------------------------------
    def start_local_server(self) -> None:
        self.embedded.start()
        self.local_server.emit("starting")
        self._poll.start(100)

    def _check_embedded(self) -> None:
        if self.embedded.status != "starting":
            self._poll.stop()
            self.local_server.emit(self.embedded.status)

    def local_endpoint(self) -> Endpoint | None:
        if self.embedded.status != "ready" or self.embedded.url is None:
            return None
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
        return self.dictation is not None

    def start(self, source: AudioSource, title: str | None = None) -> bool:
        """Begin a dictation from `source`. Returns False (and emits `failed`) if it cannot."""
        if self.dictation is not None:
            return False
        try:
            endpoints = self.loop.submit(self.choose_endpoints()).result(timeout=10)
        except Exception as exc:  # a slow probe, a broken keyring: this computer still works
            log.warning("choosing a server failed (%s): using this computer", exc)
            endpoints = [e for e in [self.local_endpoint()] if e is not None]
        if not endpoints:
            self.failed.emit("No server is ready yet: the local model is still loading, "
                             "or it failed (see the status line).")
            return False
        journal_id = uuid.uuid4().hex
        self.writer = self.journal.open(journal_id)
        self.dictation_id = self.history.start_dictation(
            title=title, server=endpoints[0].name, audio_path=str(self.writer.entry.pcm_path))
        self.dictation = Dictation(endpoints, _Bridge(self))
        future = self.loop.submit(self.dictation.start())
        try:
            future.result(timeout=15)
        except (DictationFailed, TimeoutError) as exc:
            self._abandon(f"Could not start: {exc}")
            return False
        self.samples = 0
        self.overruns = 0
        self._stopping = False
        self._started_at = time.monotonic()
        self.source = source
        try:
            source.start(self._on_audio, self._on_source_end)
        except CaptureError as exc:
            self.loop.submit(self.dictation.abort())
            self._abandon(str(exc))
            return False
        self.recording.emit(True)
        return True

    def _abandon(self, message: str) -> None:
        if self.writer is not None:
            self.writer.close(status="failed")
        if self.dictation_id is not None:
            self.history.delete(self.dictation_id)
        self.dictation = None
        self.dictation_id = None
        self.writer = None
        self.failed.emit(message)

    def _on_audio(self, chunk: np.ndarray) -> None:  # capture thread
        if self.writer is not None:
            self.writer.append(chunk)
        self.samples += len(chunk)
        dictation = self.dictation
        if dictation is not None:
            self.loop.call(dictation.feed, chunk)
        self.level.emit(level_dbfs(chunk))

    def _on_source_end(self) -> None:  # capture thread
        self._source_ended.emit()

    def stop(self) -> None:
        """Stop capturing and finish the dictation (results keep arriving until `finished`)."""
        if self.dictation is None or self._stopping:
            return
        self._stopping = True
        if self.source is not None:
            self.source.stop()
            self.overruns = self.source.overruns
        dictation, dictation_id = self.dictation, self.dictation_id
        future = self.loop.submit(dictation.finish())
        future.add_done_callback(
            lambda f: self._finish_done.emit(dictation_id, f.exception() is None))

    def _store_final(self, index: int, start: float, end: float, text: str, error: str) -> None:
        if self.dictation_id is not None:
            self.history.add_segment(self.dictation_id, index, start, end, text)

    def _complete(self, dictation_id: int, ok: bool) -> None:
        duration = self.samples / 16_000
        if self.writer is not None:
            self.writer.close(status="done" if ok else "recording")
        self.history.finish(dictation_id, duration)
        self.dictation = None
        self.dictation_id = None
        self.writer = None
        self.recording.emit(False)
        if not ok:
            self.failed.emit("Some audio could not be transcribed; it is kept in the journal.")
        self.finished.emit(dictation_id)

    def shutdown(self) -> None:
        if self._discovery is not None:
            self._discovery.cancel()
        if self.source is not None:
            self.source.stop()
        self.embedded.stop()
        self.loop.stop()

