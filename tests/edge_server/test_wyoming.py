"""Wyoming (Home Assistant) on a real `earshot-server`, driven by the `wyoming` package's own
client: describe, a real transcript from 44.1 kHz stereo and 22.05 kHz 32-bit chunks, bad
input answered with an `error` event while the server serves on, the address allowlist, and
the `_wyoming._tcp.local.` record on 127.0.0.1."""

from __future__ import annotations

import asyncio
import signal
import time

import numpy as np
import pytest
import soxr
from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event, async_read_event
from wyoming.info import Describe, Info
from wyoming.ping import Ping, Pong

from edge_server.audio import read_audio
from edge_server.config import load_settings
from edge_server.evaluation import word_error_rate
from edge_server.lan.discovery import WYOMING_SERVICE_TYPE
from edge_server.wyoming_server import is_allowed, parse_networks
from tests.conftest import DEV, dev_rows
from tests.mdns_watch import MdnsWatch
from tests.server_harness import start_server

Address = tuple[str, int]
SAMPLES_PER_CHUNK = 1024  # what Home Assistant and wyoming's wav_to_chunks send


def pcm(audio: np.ndarray, rate: int, width: int, channels: int) -> bytes:
    """16 kHz float32 -> interleaved PCM at `rate` (width 2: int16, 4: int32)."""
    resampled = soxr.resample(audio, 16_000, rate) if rate != 16_000 else audio
    frames = np.repeat(resampled[:, None].astype(np.float64), channels, axis=1)
    frames[:, 1:] *= 0.5  # channels differ: the server must average, not pick one
    scale, dtype = {2: (32767, "<i2"), 4: (2_147_483_647, "<i4")}[width]
    return (np.clip(frames, -1, 1) * scale).astype(dtype).tobytes()


def utterance(data: bytes, rate: int, width: int, channels: int) -> list[Event]:
    step = SAMPLES_PER_CHUNK * width * channels
    chunks = [AudioChunk(rate, width, channels, data[i : i + step]).event()
              for i in range(0, len(data), step)]
    return [AudioStart(rate, width, channels).event(), *chunks, AudioStop().event()]


async def exchange(address: Address, events: list[Event], closes: bool = False) -> Event:
    """Send `events` on a new connection; the first reply. `closes`: the server then hangs up."""
    async with AsyncTcpClient(*address) as client:
        for event in events:
            await client.write_event(event)
        reply = await asyncio.wait_for(client.read_event(), 60)
        assert reply is not None, "connection closed without a reply"
        if closes:
            assert await asyncio.wait_for(client.read_event(), 5) is None
    return reply


def error_of(event: Event) -> Error:
    assert Error.is_type(event.type), event
    return Error.from_event(event)


# ---- settings and the allowlist (pure) --------------------------------------------------
def test_settings_and_allowlist(tmp_path):
    defaults = load_settings(None, {})
    assert (defaults.wyoming, defaults.wyoming_port, defaults.max_utterance_s) == (False, 10300,
                                                                                   300.0)
    nets = parse_networks(defaults.wyoming_allow)
    for ok in ("127.0.0.1", "::1", "10.1.2.3", "172.20.0.9", "192.168.1.5", "169.254.3.3",
               "fd12::1", "fe80::1%eth0", "::ffff:192.168.1.5"):
        assert is_allowed(ok, nets), ok
    for refused in ("8.8.8.8", "172.32.0.1", "2001:db8::1", "::ffff:8.8.8.8", None, "bogus"):
        assert not is_allowed(refused, nets), refused

    cfg = tmp_path / "s.toml"
    cfg.write_text('wyoming = true\nwyoming_allow = ["192.168.1.0/24", "::1"]\n'
                   'max_utterance_s = 30\n')
    s = load_settings(cfg, {"wyoming_port": 0})
    assert (s.wyoming, s.wyoming_port, s.max_utterance_s) == (True, 0, 30)
    assert s.wyoming_allow == ("192.168.1.0/24", "::1")
    cfg.write_text('wyoming_allow = ["192.168.1.300/24"]\n')
    with pytest.raises(ValueError, match="wyoming_allow"):
        load_settings(cfg, {})


# ---- a real model ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_server():
    server = start_server("--wyoming", "--wyoming-port", "0")
    yield server
    assert server.stop() == 0


def test_describe_lists_the_served_model(real_server):
    reply = asyncio.run(exchange(real_server.wyoming_address(), [Describe().event()]))
    assert Info.is_type(reply.type)
    [program] = Info.from_event(reply).asr
    assert program.name == "earshot" and program.installed and program.version
    [model] = program.models
    assert model.name == "moonshine-tiny-en" and model.installed and model.languages == ["en"]
    assert model.attribution.name and model.attribution.url.startswith("https://")


def test_transcribes_resampled_stereo_and_32_bit_chunks_like_home_assistant(real_server):
    """Home Assistant's order: transcribe, audio-start, chunks, audio-stop; read a transcript.
    Two utterances on one connection, in two formats that both need converting."""
    rows = [r for r in dev_rows(("sherpa-test-wavs",)) if r["path"].endswith(("/0.wav",
                                                                                "/8k.wav"))]
    formats = [(44_100, 2, 2), (22_050, 4, 1)]

    async def run() -> list[str]:
        texts = []
        async with AsyncTcpClient(*real_server.wyoming_address()) as client:
            for row, (rate, width, channels) in zip(rows, formats, strict=True):
                data = pcm(read_audio(DEV / row["path"]), rate, width, channels)
                await client.write_event(Transcribe(name="moonshine-tiny-en",
                                                    language="en").event())
                for event in utterance(data, rate, width, channels):
                    await client.write_event(event)
                reply = await asyncio.wait_for(client.read_event(), 60)
                assert Transcript.is_type(reply.type), reply
                texts.append(Transcript.from_event(reply).text)
        return texts

    texts = asyncio.run(run())
    score = word_error_rate([r["transcript"] for r in rows], texts)
    assert score.wer <= 0.15, (texts, score)
    assert "lamps" in texts[0].lower() and "apprehension" in texts[1].lower()


# ---- bad input, on the no-op engine ----------------------------------------------------
@pytest.fixture(scope="module")
def noop_server(tmp_path_factory):
    cfg = tmp_path_factory.mktemp("wyoming") / "server.toml"
    cfg.write_text("max_utterance_s = 2.0\n")
    server = start_server("--noop-engine", "--wyoming", "--wyoming-port", "0",
                          "--config", str(cfg))
    yield server
    assert server.stop() == 0


def tone(seconds: float, rate: int = 16_000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    return (np.sin(2 * np.pi * 220 * t) * 8000).astype("<i2").tobytes()


def test_bad_requests_get_an_error_and_the_server_serves_on(noop_server):
    address = noop_server.wyoming_address()
    good = utterance(tone(1.0), 16_000, 2, 1)

    async def run() -> None:
        cases = [
            ([AudioChunk(16_000, 2, 1, tone(0.1)).event(), AudioStop().event()],
             "no_audio_start"),
            ([AudioStop().event()], "no_audio_start"),
            (utterance(b"\0" * 3 * 1600, 16_000, 3, 1), "unsupported_audio"),
            (utterance(tone(0.1, 1000), 1000, 2, 1), "unsupported_audio"),
            ([AudioStart(16_000, 2, 1).event(), AudioChunk(16_000, 2, 2, b"\0" * 6).event(),
              AudioStop().event()], "unsupported_audio"),
            (utterance(tone(3.0), 16_000, 2, 1), "too_long"),
            ([Transcribe(name="whisper-large").event(), *good], "unknown_model"),
            ([Transcribe(language="de").event(), *good], "unsupported_language"),
            ([AudioStart(16_000, 2, 1).event(), AudioStart(16_000, 2, 1).event(),
              AudioStop().event()], "bad_event"),
            ([Event("audio-start", {"rate": "fast", "width": 2, "channels": 1}),
              AudioStop().event()], "bad_event"),
        ]
        for events, code in cases:
            reply = await exchange(address, events, closes=True)
            assert error_of(reply).code == code, (code, reply)
            # ... and the next request is served normally
            reply = await exchange(address, [Transcribe(language="en-US").event(), *good])
            assert Transcript.from_event(reply).text == "speech"

    asyncio.run(run())
    assert noop_server.health()["status"] == "ready"


def test_malformed_bytes_and_a_vanishing_client_leave_the_server_serving(noop_server):
    host, port = noop_server.wyoming_address()

    async def raw(data: bytes) -> list[Event | None]:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(data)
        await writer.drain()
        first = await asyncio.wait_for(async_read_event(reader), 5)
        second = await asyncio.wait_for(async_read_event(reader), 5)
        writer.close()
        return [first, second]

    async def vanish() -> None:
        async with AsyncTcpClient(host, port) as client:
            await client.write_event(AudioStart(48_000, 2, 2).event())
            await client.write_event(AudioChunk(48_000, 2, 2, b"\1\0" * 9600).event())
            client._writer.transport.abort()  # gone mid-utterance, without audio-stop

    async def run() -> None:
        for data, code in [(b"this is not json\n", "bad_event"),
                           (b'{"data": {}}\n', "bad_event"),
                           (b'{"type": "audio-chunk", "payload_length": 99999999999}\n',
                            "bad_event")]:
            first, second = await raw(data)
            assert error_of(first).code == code and second is None
        await vanish()
        reply = await exchange((host, port), [Ping(text="hi").event()])
        assert Pong.from_event(reply).text == "hi"
        reply = await exchange((host, port), utterance(tone(1.0, 8000), 8000, 2, 1))
        assert Transcript.from_event(reply).text == "speech"

    asyncio.run(run())
    health = noop_server.health()
    assert health["status"] == "ready" and health["counters"]["wyoming_errors"] >= 3


def test_shutdown_ends_an_open_utterance_cleanly():
    server = start_server("--noop-engine", "--wyoming", "--wyoming-port", "0")
    try:
        address = server.wyoming_address()

        async def run() -> Event | None:
            async with AsyncTcpClient(*address) as client:
                await client.write_event(AudioStart(16_000, 2, 1).event())
                await client.write_event(AudioChunk(16_000, 2, 1, tone(0.5)).event())
                await asyncio.sleep(0.1)
                server.proc.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.1)
                try:
                    await client.write_event(AudioStop().event())
                    return await asyncio.wait_for(client.read_event(), 10)
                except ConnectionResetError:
                    return None

        reply = asyncio.run(run())
        assert reply is None or error_of(reply).code == "unavailable", reply
        assert server.proc.wait(15) == 0
    finally:
        server.stop()


# ---- allowlist and mDNS ----------------------------------------------------------------
def test_allowlist_closes_other_addresses_and_mdns_record_comes_and_goes(tmp_path):
    cfg = tmp_path / "server.toml"
    cfg.write_text('wyoming_allow = ["10.0.0.0/8"]\n')  # 127.0.0.1 is not in it
    server = start_server("--noop-engine", "--wyoming", "--wyoming-port", "0", "--config",
                          str(cfg), "--mdns-interfaces", "127.0.0.1", "--name", "kitchen")
    watch = MdnsWatch(WYOMING_SERVICE_TYPE)
    try:
        host, port = server.wyoming_address()

        async def refused() -> Event | None:
            reply = None
            try:
                async with AsyncTcpClient(host, port) as client:
                    await client.write_event(Describe().event())
                    reply = await asyncio.wait_for(client.read_event(), 5)
            except ConnectionResetError:  # closed at once, unread describe and all
                pass
            return reply

        assert asyncio.run(refused()) is None
        deadline = time.monotonic() + 5  # the log is read from the server's stdout by a thread
        while not any("refused connection from 127.0.0.1" in ln for ln in server.log):
            assert time.monotonic() < deadline, "refusal not logged"
            time.sleep(0.05)

        watch.start()
        assert watch.added.wait(3.0), "_wyoming._tcp not found within 3 s"
        info = watch.info(watch.names[0])
        assert watch.names == [f"kitchen.{WYOMING_SERVICE_TYPE}"]  # stable: HA keys on it
        assert info.port == port and info.parsed_addresses() == ["127.0.0.1"]

        started = time.monotonic()
        assert server.stop() == 0
        assert watch.removed.wait(5.0), "_wyoming._tcp still advertised after shutdown"
        assert time.monotonic() - started < 10
    finally:
        server.stop()
        watch.close()
