"""Wyoming ASR server (Home Assistant's speech-to-text protocol) inside the edge server.

`WyomingServer(edge)` serves `tcp://wyoming_host:wyoming_port` with the `wyoming`
package's `AsyncTcpServer`, one `WyomingHandler` (an `AsyncEventHandler`) per connection:
- `describe` -> `info`: one `AsrProgram` "earshot" listing every model the edge server
  serves (the default first);
- `transcribe` (optional): `name` picks a served model for the next utterance (absent: the
  default; not served: error `unknown_model` listing the served ones), `language` must be
  one that model speaks;
- `audio-start`, `audio-chunk`*, `audio-stop` -> one `transcript` event.
Chunks of any rate (4-384 kHz), width (1: unsigned 8-bit, 2: signed 16-bit, 4: signed
32-bit) and channel count are converted to 16 kHz mono float32 as they arrive; an utterance
is held until `audio-stop` (at most `max_utterance_s` of audio), then decoded by
`edge.clips` on the server's shared scheduler and workers.

Errors: any refused request gets one Wyoming `error` event (with a `code`), after which the
connection takes no more requests: the rest of the utterance is read and dropped, and the
connection closes after `audio-stop` (at once when the error answers `audio-stop` or an
unreadable event). Home Assistant ignores `error` events and waits for a transcript or a
closed connection, so closing is what makes it give up promptly.
Access: Wyoming has no credentials; connections from outside `wyoming_allow` are closed at
once. Runs on the server's event loop; nothing here blocks it for long.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING

from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import AsrModel, AsrProgram, Attribution, Describe, Info
from wyoming.ping import Ping, Pong
from wyoming.server import AsyncEventHandler, AsyncTcpServer

from edge_server.clips import ClipError, ClipsBusy
from edge_server.config import UnknownServedModel
from edge_server.lan.auth import peer_ip
from edge_server.wyoming_events import (
    BadEvent,
    RequestError,
    Utterance,
    audio_format,
    read_event,
)

if TYPE_CHECKING:
    from edge_server.app import EdgeServer

log = logging.getLogger(__name__)

PROGRAM = "earshot"
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


# ---- access ---------------------------------------------------------------------------
def parse_networks(items: tuple[str, ...]) -> tuple[Network, ...]:
    """`wyoming_allow` entries as networks; raises ValueError for a malformed one."""
    return tuple(ipaddress.ip_network(item, strict=False) for item in items)


def is_allowed(host: str | None, networks: tuple[Network, ...]) -> bool:
    """Whether a peer address lies in one of `networks` (IPv4-mapped IPv6 counts as IPv4)."""
    ip = peer_ip(host)
    return ip is not None and any(ip in net for net in networks)


# ---- info -----------------------------------------------------------------------------
def _version() -> str | None:
    try:
        return metadata.version("earshot")
    except metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True)
class ModelInfo:
    name: str
    languages: tuple[str, ...]
    description: str
    attribution: Attribution


def model_info(model_id: str) -> ModelInfo:
    """What `info` says about the served model (from the catalog when it lists it)."""
    from models.catalog import UnknownModelError, load_catalog

    try:
        spec = load_catalog().get(model_id)
    except UnknownModelError:  # the no-op engine
        return ModelInfo(model_id, ("en",), "no inference (overhead measurement)",
                         Attribution(name="Earshot", url=""))
    package = spec.source.pypi.split("==")[0]
    return ModelInfo(model_id, (spec.language,), spec.description,
                     Attribution(name=spec.family, url=f"https://pypi.org/project/{package}/"))


def speaks(language: str, languages: tuple[str, ...]) -> bool:
    """Whether `language` (e.g. "en", "en-US", "en_GB") is one of `languages`."""
    return language.replace("_", "-").split("-")[0].lower() in languages


# ---- server ---------------------------------------------------------------------------
class WyomingServer:
    def __init__(self, edge: EdgeServer) -> None:
        settings = edge.settings
        self.edge = edge
        self.host = settings.wyoming_host or settings.host
        self.port = settings.wyoming_port
        self.networks = parse_networks(settings.wyoming_allow)
        self.utterances = 0  # open utterances (buffering audio), all connections
        self._tcp = AsyncTcpServer(self.host, self.port)

    @property
    def uri(self) -> str:
        return f"tcp://{self.host}:{self.port}"

    async def start(self) -> None:
        """Bind and serve; `port` becomes the real port (0 picks a free one)."""
        await self._tcp.start(lambda reader, writer: WyomingHandler(self, reader, writer))
        assert self._tcp._server is not None
        self.port = self._tcp._server.sockets[0].getsockname()[1]
        log.info("wyoming: serving on %s (open to %s, no token)", self.uri,
                 ", ".join(str(n) for n in self.networks) or "nobody")

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop listening, close every connection, wait for their handlers to end."""
        tasks = list(self._tcp._handlers)
        await self._tcp.stop()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    def model(self, name: str | None = None) -> ModelInfo:
        """The served model `name` (None: the default); UnknownServedModel otherwise."""
        return model_info(self.edge.resolve_model(name))

    def info(self) -> Info:
        asr_models = []
        for model_id in self.edge.models:
            model = model_info(model_id)
            asr_models.append(AsrModel(
                name=model.name, attribution=model.attribution, installed=True,
                description=model.description, version=None, languages=list(model.languages)))
        program = AsrProgram(name=PROGRAM, attribution=Attribution(name="Earshot", url=""),
                             installed=True, description="Earshot private speech-to-text",
                             version=_version(), models=asr_models)
        return Info(asr=[program])

    def refusal(self) -> str | None:
        """Why an utterance cannot be decoded right now, or None."""
        if self.edge.draining:
            return "server is shutting down"
        if not self.edge.pool.serving:  # restarting workers: the utterance waits
            return "server is starting (models loading)"
        return None


class WyomingHandler(AsyncEventHandler):
    """One Wyoming connection. Events are handled one at a time, in order."""

    def __init__(self, server: WyomingServer, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        super().__init__(reader, writer)
        self.server = server
        self.edge = server.edge
        peer = writer.get_extra_info("peername")
        self.peer: str | None = peer[0] if isinstance(peer, tuple) and peer else None
        self.utterance: Utterance | None = None
        self.language: str | None = None
        self.model: str | None = None  # picked by `transcribe` for the next utterance
        self.failed = False  # an error was sent: drop events until audio-stop, then close

    # ---- connection --------------------------------------------------------------------
    async def run(self) -> None:
        if not is_allowed(self.peer, self.server.networks):
            log.warning("wyoming: refused connection from %s (not in wyoming_allow)", self.peer)
            self.edge.stats["wyoming_refused"] += 1
            self.writer.close()
            return
        self._is_running = True
        try:
            while self._is_running and await self._next():
                pass
        except (OSError, EOFError) as exc:  # the client vanished
            log.debug("wyoming: connection from %s lost: %r", self.peer, exc)
        except Exception:
            log.exception("wyoming: connection from %s failed", self.peer)
        finally:
            await self.disconnect()
            self.writer.close()

    async def _next(self) -> bool:
        """Read and handle one event; False ends the connection."""
        try:
            event = await asyncio.wait_for(read_event(self.reader),
                                           self.edge.settings.idle_timeout_s)
        except TimeoutError:
            log.info("wyoming: closing idle connection from %s", self.peer)
            return False
        except BadEvent as exc:
            await self._fail("bad_event", str(exc))
            return False
        return event is not None and await self.handle_event(event)

    async def disconnect(self) -> None:
        if self.utterance is not None:
            log.info("wyoming: %s left mid-utterance; its audio is dropped", self.peer)
        self._drop()

    # ---- events ------------------------------------------------------------------------
    async def handle_event(self, event: Event) -> bool:
        if self.failed:
            return not AudioStop.is_type(event.type)
        try:
            await self._dispatch(event)
        except RequestError as exc:
            await self._fail(exc.code, str(exc))
            return not AudioStop.is_type(event.type)  # more audio may follow: read it first
        return True

    async def _dispatch(self, event: Event) -> None:
        kind = event.type
        if Describe.is_type(kind):
            await self.write_event(self.server.info().event())
        elif Ping.is_type(kind):
            await self.write_event(Pong(text=Ping.from_event(event).text).event())
        elif Transcribe.is_type(kind):
            self._transcribe(event)
        elif AudioStart.is_type(kind):
            self._audio_start(event)
        elif AudioChunk.is_type(kind):
            if self.utterance is None:
                raise RequestError("no_audio_start", "audio-chunk before audio-start")
            self.utterance.add(event)
        elif AudioStop.is_type(kind):
            await self._audio_stop()
        else:  # Wyoming servers drop events they do not know
            log.debug("wyoming: ignored %s event from %s", kind, self.peer)

    def _transcribe(self, event: Event) -> None:
        if self.utterance is not None:
            raise RequestError("bad_event", "transcribe inside an utterance")
        name, language = event.data.get("name"), event.data.get("language")
        try:
            if name is not None and not isinstance(name, str):
                raise UnknownServedModel(repr(name), self.edge.models)
            model = self.server.model(name)
        except UnknownServedModel as exc:
            raise RequestError("unknown_model", str(exc)) from None
        if language is not None and not (isinstance(language, str)
                                         and speaks(language, model.languages)):
            raise RequestError("unsupported_language", f"unsupported language {language!r} "
                                                       f"(supported: {', '.join(model.languages)})")
        self.language = language
        self.model = model.name

    def _audio_start(self, event: Event) -> None:
        if self.utterance is not None:
            raise RequestError("bad_event", "audio-start inside an utterance")
        audio_format(event)
        if (why := self.server.refusal()) is not None:
            raise RequestError("unavailable", why)
        if self.server.utterances >= self.edge.settings.max_sessions:
            raise RequestError("unavailable", "too many Wyoming utterances at once")
        self.utterance = Utterance(self.edge.settings.max_utterance_s)
        self.server.utterances += 1

    async def _audio_stop(self) -> None:
        if self.utterance is None:
            raise RequestError("no_audio_start", "audio-stop without audio-start")
        blocks = self.utterance.finish()
        self._drop()
        if (why := self.server.refusal()) is not None:
            raise RequestError("unavailable", why)
        try:
            result = await self.edge.clips.transcribe(iter(blocks), source="wyoming",
                                                      model=self.model)
        except ClipsBusy as exc:
            raise RequestError("busy", str(exc)) from None
        except ClipError as exc:
            raise RequestError("decode_failed", f"decoding failed: {exc}") from None
        self.edge.stats["wyoming_transcripts"] += 1
        language = self.language or self.server.model(self.model).languages[0]
        self.language = self.model = None
        await self.write_event(Transcript(text=result.text, language=language).event())

    # ---- helpers -----------------------------------------------------------------------
    def _drop(self) -> None:
        if self.utterance is not None:
            self.utterance = None
            self.server.utterances -= 1

    async def _fail(self, code: str, text: str) -> None:
        """Send one error event; the connection then takes no more requests."""
        self._drop()
        self.failed = True
        self.edge.stats["wyoming_errors"] += 1
        log.info("wyoming: %s from %s: %s", code, self.peer, text)
        await self.write_event(Error(text=text, code=code).event())
