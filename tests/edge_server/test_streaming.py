"""End to end: a real earshot-server process, real model, real WebSocket clients."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid

import aiohttp
import numpy as np
import pytest

from desktop.stream_client import StreamClient, StreamError
from edge_server.audio import float_to_pcm16
from edge_server.evaluation import word_error_rate
from edge_server.protocol import encode_frame
from tests.conftest import DEV, dev_rows, speech_with_pauses
from tests.server_harness import start_server, stream_audio

TOKEN = "s3cret-token"
ROWS = dev_rows(("librispeech-test-clean-kw", "pocketsphinx-testdata"))[:6]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    cfg = tmp_path_factory.mktemp("cfg") / "server.toml"
    cfg.write_text("handshake_timeout_s = 1.0\nmax_frame_ms = 1000\n")
    srv = start_server("--token", TOKEN, "--auth", "all", "--config", str(cfg))
    yield srv
    assert srv.stop() == 0


def run(coro):
    return asyncio.run(coro)


def test_stream_gives_one_final_per_utterance_then_ended(server):
    audio = speech_with_pauses([DEV / r["path"] for r in ROWS], pause_s=1.0)
    events: list = []
    finals, client = run(stream_audio(server.url, audio, token=TOKEN, events=events))
    assert [f.segment for f in finals] == list(range(len(ROWS)))
    assert client.latency_ms is not None and 0 <= client.latency_ms < 1000  # ping round trip
    score = word_error_rate([r["transcript"] for r in ROWS], [f.text for f in finals])
    assert score.wer <= 0.06, [f.text for f in finals]
    kinds = [e["type"] for _, e in events]
    assert kinds[-1] == "ended" and kinds.count("ended") == 1
    final_ids = [e["segment"] for _, e in events if e["type"] == "final"]
    assert final_ids == list(range(len(ROWS)))  # exactly once, in order
    assert events[-1][1]["segments"] == len(ROWS)
    assert all(a.end <= b.start for a, b in itertools.pairwise(finals))


def test_realtime_stream_shows_partials_before_its_final(server):
    audio = speech_with_pauses([DEV / "sherpa-test-wavs/0.wav"], pause_s=1.0)
    events: list = []
    finals, _ = run(stream_audio(server.url, audio, token=TOKEN, realtime=True, events=events))
    partial_times = [t for t, e in events if e["type"] == "partial"]
    final_time = next(t for t, e in events if e["type"] == "final")
    assert len(partial_times) >= 5 and max(partial_times) < final_time
    gaps = np.diff(partial_times)
    assert np.median(gaps) <= 0.75, gaps
    assert "lamps" in finals[0].text


def test_silence_and_noise_give_no_text(server):
    rng = np.random.default_rng(1)
    audio = np.concatenate([np.zeros(48000, np.float32),
                            (0.005 * rng.standard_normal(48000)).astype(np.float32)])
    events: list = []
    finals, _ = run(stream_audio(server.url, audio, token=TOKEN, events=events))
    assert finals == []
    assert [e["type"] for _, e in events if e["type"] != "pong"] == ["ended"]


def test_declared_8k_audio_is_converted(server):
    audio, _ = read_8k()
    finals, _ = run(stream_audio(server.url, audio, token=TOKEN, rate=8000, frame=800))
    assert "apprehension" in " ".join(f.text for f in finals).lower()


def read_8k():
    import soundfile as sf

    data, rate = sf.read(DEV / "sherpa-test-wavs/8k.wav", dtype="float32")
    assert rate == 8000
    return np.concatenate([data, np.zeros(8000, np.float32)]), rate


def test_dropped_connection_resumes_with_the_same_transcript(server):
    audio = speech_with_pauses([DEV / r["path"] for r in ROWS[:4]], pause_s=0.8)
    reference, _ = run(stream_audio(server.url, audio, token=TOKEN))
    dropped = {"done": False}

    async def drop_midway(client: StreamClient, sent: int) -> None:
        if not dropped["done"] and sent > len(audio) * 0.45:
            dropped["done"] = True
            await client.drop_connection()
            await asyncio.sleep(0.3)

    finals, client = run(stream_audio(server.url, audio, token=TOKEN, during=drop_midway))
    assert client.reconnects == 1
    # the same segments, exactly (VAD is deterministic and no frame was lost or doubled) ...
    assert [(f.segment, f.start, f.end) for f in finals] == [
        (f.segment, f.start, f.end) for f in reference]
    # ... and the same words up to batch-composition rounding (int8 decoder, docs/engine.md)
    drift = word_error_rate([f.text for f in reference], [f.text for f in finals])
    assert drift.wer <= 0.03, ([f.text for f in reference], [f.text for f in finals])
    health = server.health()
    assert health["counters"]["sessions_resumed"] >= 1
    assert health["counters"].get("duplicate_frames", 0) >= 0


# ---- bad input ---------------------------------------------------------------------------

HELLO = {"type": "hello", "protocol": 1, "token": TOKEN,
         "audio": {"encoding": "pcm_s16le", "sample_rate": 16000, "channels": 1}}


async def raw_exchange(url: str, first: list, after_ready: list | None = None) -> tuple[dict, int]:
    """Send messages on a raw WebSocket; return the error message and the close code."""
    async with aiohttp.ClientSession() as http, http.ws_connect(url + "/v1/stream") as ws:
        for m in first:
            await (ws.send_bytes(m) if isinstance(m, bytes) else ws.send_str(m))
        for m in after_ready or []:
            await (ws.send_bytes(m) if isinstance(m, bytes) else ws.send_str(m))
        error = {}
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                data = json.loads(msg.data)
                if data["type"] == "error":
                    error = data
        return error, ws.close_code


def hello(**kw) -> str:
    return json.dumps({**HELLO, "session": kw.pop("session", uuid.uuid4().hex), **kw})


PCM = float_to_pcm16(np.zeros(1600, np.float32))
BAD_CASES = {
    "bad-token": ([hello(token="nope")], None, "unauthorized", 4401),
    "no-token": ([hello(token=None)], None, "unauthorized", 4401),
    "unknown-version": ([hello(protocol=9)], None, "unsupported_version", 4415),
    "unsupported-rate": ([hello(audio={"sample_rate": 7000})], None, "unsupported_audio", 4415),
    "not-json": (["{{{"], None, "bad_message", 4400),
    "audio-before-hello": ([encode_frame(0, PCM)], None, "bad_message", 4400),
    "oversized-frame": ([hello()], [encode_frame(0, b"\x00" * 64000)], "frame_too_large", 4413),
    "odd-pcm": ([hello()], [encode_frame(0, b"\x00" * 7)], "bad_frame", 4400),
    "short-frame": ([hello()], [b"\x01\x02"], "bad_frame", 4400),
    "sequence-gap": ([hello()], [encode_frame(0, PCM), encode_frame(5, PCM)], "sequence_gap", 4400),
    "unknown-type": ([hello()], [json.dumps({"type": "dance"})], "bad_message", 4400),
    "resume-unknown": ([hello(resume=True)], None, "session_unknown", 4411),
    "no-hello": ([], None, "handshake_timeout", 4408),
}


def test_bad_clients_get_documented_errors_while_a_good_stream_carries_on(server):
    audio = speech_with_pauses([DEV / r["path"] for r in ROWS[:3]], pause_s=0.8)

    async def scenario():
        good = asyncio.create_task(stream_audio(server.url, audio, token=TOKEN, realtime=False))
        results = {}
        for name, (first, after, _, _) in BAD_CASES.items():
            results[name] = await raw_exchange(server.url, first, after)
        finals, _ = await good
        return results, finals

    results, finals = run(scenario())
    for name, (_, _, code, close) in BAD_CASES.items():
        error, close_code = results[name]
        assert (error.get("code"), close_code) == (code, close), name
        assert error["message"] and error["fatal"] is True
    assert len(finals) == 3 and all(f.text for f in finals)
    assert server.health()["status"] == "ready"


def test_client_reports_refusal_by_token(server):
    async def go():
        client = StreamClient(server.url, token="wrong")
        await client.connect()

    with pytest.raises(StreamError, match="unauthorized"):
        run(go())


def test_session_query_cannot_smuggle_a_new_session_past_admission(server):
    async def go():
        owner = StreamClient(server.url, token=TOKEN)
        await owner.connect()
        async with aiohttp.ClientSession() as http, http.ws_connect(
                server.url + "/v1/stream", params={"session": owner.session_id}) as ws:
            await ws.send_str(hello())  # a different, new session id
            msgs = [json.loads(m.data) async for m in ws if m.type == aiohttp.WSMsgType.TEXT]
            code = ws.close_code
        await owner.send_audio(np.zeros(1600, np.float32))
        await owner.finish(20)
        return msgs, code

    msgs, code = run(go())
    assert msgs[-1]["code"] == "overloaded" and code == 4503


def test_hello_with_float_rate_is_refused(server):
    error, close = run(raw_exchange(server.url, [hello(audio={"sample_rate": 16000.0})]))
    assert (error["code"], close) == ("bad_message", 4400)


def test_metrics_parse_as_prometheus_text(server):
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    audio = speech_with_pauses([DEV / r["path"] for r in ROWS[:2]], pause_s=0.8)
    finals, _ = run(stream_audio(server.url, audio, token=TOKEN))
    with urllib.request.urlopen(server.url + "/metrics", timeout=5) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        families = {f.name: f for f in text_string_to_metric_families(resp.read().decode())}
    value = {f.name: {s.name: s.value for s in f.samples} for f in families.values()}
    assert value["earshot_sessions_started"]["earshot_sessions_started_total"] >= 1
    assert value["earshot_batch_size"]["earshot_batch_size_count"] >= 1
    assert value["earshot_final_latency_seconds"]["earshot_final_latency_seconds_count"] >= 2
    assert value["earshot_workers_ready"]["earshot_workers_ready"] == 1
    for name in ("earshot_sessions", "earshot_queue_depth", "earshot_realtime_factor",
                 "earshot_worker_restarts", "earshot_sessions_rejected",
                 "earshot_batch_decode_seconds"):
        assert name in families, name
    assert len(finals) == 2


def test_acks_are_coalesced_and_cover_every_frame(server):
    """A burst of frames gets acks at most every 200 ms (plus the one `end` forces), each
    above the previous, the last one naming the last frame; pongs answer pings in between."""
    pcm = float_to_pcm16(np.zeros(16_000 * 20, np.float32))
    frames = [encode_frame(i, pcm[o : o + 3200]) for i, o in enumerate(range(0, len(pcm), 3200))]

    async def go():
        async with aiohttp.ClientSession() as http, http.ws_connect(
                server.url + "/v1/stream") as ws:
            await ws.send_str(hello())
            started = time.monotonic()
            for i, frame in enumerate(frames):
                await ws.send_bytes(frame)
                if i % 20 == 0:
                    await ws.send_str(json.dumps({"type": "ping", "t": i}))
            await ws.send_str(json.dumps({"type": "end"}))
            msgs = [json.loads(m.data) async for m in ws if m.type == aiohttp.WSMsgType.TEXT]
            return msgs, time.monotonic() - started, ws.close_code

    msgs, elapsed, close = run(go())
    acks = [m["seq"] for m in msgs if m["type"] == "ack"]
    assert acks == sorted(set(acks)) and acks[-1] == len(frames) - 1
    assert len(acks) <= 2 + elapsed / 0.2, (len(acks), elapsed)
    assert [m["t"] for m in msgs if m["type"] == "pong"] == list(range(0, len(frames), 20))
    assert msgs[-1]["type"] == "ended" and close == 1000
