"""Wyoming ASR server (Home Assistant's speech-to-text protocol) inside the edge server.

`WyomingServer(edge)` serves `tcp://wyoming_host:wyoming_port` with the `wyoming`
package's `AsyncTcpServer`, one `WyomingHandler` (an `AsyncEventHandler`) per connection:
- `describe` -> `info`: one `AsrProgram` "earshot" serving the edge server's model;
- `transcribe` (optional; `name` must be that model, `language` English);
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
import json
import logging
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING

import numpy as np
import soxr
from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import AsrModel, AsrProgram, Attribution, Describe, Info
from wyoming.ping import Ping, Pong
from wyoming.server import AsyncEventHandler, AsyncTcpServer

from edge_server.audio import SAMPLE_RATE, AudioError, check_rate, pcm16_to_float, to_mono
from edge_server.auth import peer_ip
from edge_server.clips import ClipError, ClipsBusy

if TYPE_CHECKING:
    from edge_server.app import EdgeServer

log = logging.getLogger(__name__)

PROGRAM = "earshot"
WIDTHS = (1, 2, 4)
MAX_CHANNELS = 16
MAX_HEADER_BYTES = 64 * 1024  # the StreamReader's line limit
MAX_DATA_BYTES = 64 * 1024
MAX_PAYLOAD_BYTES = 4 * 1024 * 1024  # one audio chunk (~11 s of 48 kHz stereo 16-bit)
BLOCK_SAMPLES = 10 * SAMPLE_RATE  # blocks handed to the clip transcriber
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class BadEvent(ValueError):
    """An event this server cannot read; the stream cannot be trusted after it."""


class RequestError(Exception):
    """A refused request: becomes an `error` event with `code`."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code = code


# ---- access ---------------------------------------------------------------------------
def parse_networks(items: tuple[str, ...]) -> tuple[Network, ...]:
    """`wyoming_allow` entries as networks; raises ValueError for a malformed one."""
    return tuple(ipaddress.ip_network(item, strict=False) for item in items)


def is_allowed(host: str | None, networks: tuple[Network, ...]) -> bool:
    """Whether a peer address lies in one of `networks` (IPv4-mapped IPv6 counts as IPv4)."""
    ip = peer_ip(host)
    return ip is not None and any(ip in net for net in networks)


# ---- events ---------------------------------------------------------------------------
def _length(header: dict, key: str, limit: int) -> int:
    value = header.get(key) or 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BadEvent(f"{key} must be a non-negative integer")
    if value > limit:
        raise BadEvent(f"{key} {value} is over the limit of {limit} bytes")
    return value


def _json_object(raw: bytes, what: str) -> dict:
    try:
        value = json.loads(raw)
    except ValueError:
        raise BadEvent(f"{what} is not JSON") from None
    if not isinstance(value, dict):
        raise BadEvent(f"{what} is not a JSON object")
    return value


async def read_event(reader: asyncio.StreamReader) -> Event | None:
    """The next Wyoming event, None at end of stream (or a stream cut mid-event).

    Like `wyoming.event.async_read_event`, but sizes are checked before reading, so a client
    cannot make the server buffer more than one bounded event; raises BadEvent.
    """
    try:
        line = await reader.readline()
    except ValueError:  # a line over the reader's limit
        raise BadEvent(f"event header is longer than {MAX_HEADER_BYTES} bytes") from None
    if not line:
        return None
    header = _json_object(line, "event header")
    if not isinstance(header.get("type"), str):
        raise BadEvent("event has no type")
    data = header.get("data") or {}
    if not isinstance(data, dict):
        raise BadEvent("event data is not a JSON object")
    data_length = _length(header, "data_length", MAX_DATA_BYTES)
    payload_length = _length(header, "payload_length", MAX_PAYLOAD_BYTES)
    try:
        if data_length:
            data.update(_json_object(await reader.readexactly(data_length), "event data"))
        payload = await reader.readexactly(payload_length) if payload_length else None
    except asyncio.IncompleteReadError:
        return None
    return Event(type=header["type"], data=data, payload=payload)


# ---- audio ----------------------------------------------------------------------------
def _int_field(data: dict, key: str) -> int:
    value = data.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise RequestError("bad_event", f"audio field '{key}' must be an integer")
    return value


def audio_format(event: Event) -> tuple[int, int, int]:
    """(rate, width, channels) of an audio-start/audio-chunk; RequestError if unusable."""
    rate, width, channels = (_int_field(event.data, k) for k in ("rate", "width", "channels"))
    try:
        check_rate(rate)
    except AudioError as exc:
        raise RequestError("unsupported_audio", str(exc)) from None
    if width not in WIDTHS:
        raise RequestError("unsupported_audio",
                           f"unsupported sample width {width} bytes (supported: 1, 2, 4)")
    if not 1 <= channels <= MAX_CHANNELS:
        raise RequestError("unsupported_audio",
                           f"unsupported channel count {channels} (supported: 1-{MAX_CHANNELS})")
    return rate, width, channels


def pcm_to_mono(data: bytes, width: int, channels: int) -> np.ndarray:
    """Interleaved little-endian PCM (width 1 unsigned, 2 and 4 signed) -> mono float32."""
    if width == 2:
        samples = pcm16_to_float(data)
    elif width == 1:
        samples = (np.frombuffer(data, np.uint8).astype(np.float32) - 128.0) / 128.0
    else:
        samples = (np.frombuffer(data, "<i4") / 2_147_483_648.0).astype(np.float32)
    return to_mono(samples.reshape(-1, channels)) if channels > 1 else samples


class Utterance:
    """One audio-start..audio-stop stream as 16 kHz mono float32, at most `max_s` seconds."""

    def __init__(self, max_s: float) -> None:
        self.max_s = max_s
        self.seconds = 0.0  # of audio received, at its own rate
        self.blocks: list[np.ndarray] = []
        self._rate: int | None = None
        self._stream: soxr.ResampleStream | None = None

    def add(self, event: Event) -> None:
        """Convert and keep one audio-chunk; RequestError for a bad or over-long one."""
        rate, width, channels = audio_format(event)
        data = event.payload or b""
        if len(data) % (width * channels):
            raise RequestError("unsupported_audio", "audio chunk is not a whole number of frames")
        self.seconds += len(data) / (width * channels) / rate
        if self.seconds > self.max_s:
            raise RequestError("too_long", f"utterance is longer than {self.max_s:g} s")
        if rate != self._rate:
            self._flush()
            self._rate = rate
            self._stream = None if rate == SAMPLE_RATE else soxr.ResampleStream(
                rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
        mono = pcm_to_mono(data, width, channels)
        self._keep(mono if self._stream is None else self._stream.resample_chunk(mono))

    def _keep(self, samples: np.ndarray) -> None:
        if len(samples):
            self.blocks.append(samples)

    def _flush(self) -> None:
        if self._stream is not None:
            self._keep(self._stream.resample_chunk(np.zeros(0, np.float32), last=True))
            self._stream = None

    def finish(self) -> list[np.ndarray]:
        """The whole utterance as ~10 s blocks (what the clip transcriber reads)."""
        self._flush()
        audio = np.concatenate(self.blocks) if self.blocks else np.zeros(0, np.float32)
        self.blocks = []
        return [audio[i : i + BLOCK_SAMPLES] for i in range(0, len(audio), BLOCK_SAMPLES)]


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

    def model(self) -> ModelInfo:
        from models.catalog import load_catalog

        settings = self.edge.settings
        return model_info(self.edge.pool.info.get("model") or settings.model
                          or load_catalog().default_asr)

    def info(self) -> Info:
        model = self.model()
        asr_model = AsrModel(name=model.name, attribution=model.attribution, installed=True,
                             description=model.description, version=None,
                             languages=list(model.languages))
        program = AsrProgram(name=PROGRAM, attribution=Attribution(name="Earshot", url=""),
                             installed=True, description="Earshot private speech-to-text",
                             version=_version(), models=[asr_model])
        return Info(asr=[program])

    def refusal(self) -> str | None:
        """Why an utterance cannot be decoded right now, or None."""
        if self.edge.draining:
            return "server is shutting down"
        if self.edge.pool.ready_count == 0:
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
        model = self.server.model()
        if name is not None and name != model.name:
            raise RequestError("unknown_model", f"unknown model '{name}' (this server: "
                                                f"{model.name})")
        if language is not None and not (isinstance(language, str)
                                         and speaks(language, model.languages)):
            raise RequestError("unsupported_language", f"unsupported language {language!r} "
                                                       f"(supported: {', '.join(model.languages)})")
        self.language = language

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
            result = await self.edge.clips.transcribe(iter(blocks), source="wyoming")
        except ClipsBusy as exc:
            raise RequestError("busy", str(exc)) from None
        except ClipError as exc:
            raise RequestError("decode_failed", f"decoding failed: {exc}") from None
        self.edge.stats["wyoming_transcripts"] += 1
        language = self.language or self.server.model().languages[0]
        self.language = None
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
