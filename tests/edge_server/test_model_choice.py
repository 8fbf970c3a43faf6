"""One server, two models: every door (stream, OpenAI, Wyoming) picks its model per request.

A real `earshot-server --model moonshine-tiny-en,moonshine-base-en`: every worker loads both;
sessions on different models run at once, each gets its model's text (the `ready` says
which, the server's per-model batch counters show both really ran); unknown models are
refused with the served ids listed. Short utterances: base is the slow one.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.request

import aiohttp
import numpy as np
import openai
import pytest
from wyoming.asr import Transcribe, Transcript
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.info import Describe, Info

from desktop.stream_client import StreamClient, StreamError
from edge_server.audio import read_audio
from edge_server.evaluation import word_error_rate
from edge_server.protocol import PROTOCOL_VERSION, CloseCode
from tests.conftest import DEV, dev_rows
from tests.edge_server.test_wyoming import utterance
from tests.server_harness import start_server

TINY, BASE = "moonshine-tiny-en", "moonshine-base-en"
ROWS = [r for r in dev_rows(("librispeech-test-clean-kw", "pocketsphinx-testdata"))
        if r["path"].endswith(("1089-134691-0000.flac", "0880.wav"))]  # 2.1 s and 3.0 s


@pytest.fixture(scope="module")
def server():
    srv = start_server("--model", f"{TINY},{BASE}", "--wyoming", "--wyoming-port", "0")
    yield srv
    assert srv.stop() == 0


def stats(srv) -> dict:
    with urllib.request.urlopen(srv.url + "/api/stats", timeout=10) as resp:
        return json.loads(resp.read())


def padded(row: dict) -> np.ndarray:
    audio = read_audio(DEV / row["path"])
    return np.concatenate([np.zeros(8000, np.float32), audio, np.zeros(16000, np.float32)])


async def stream(url: str, audio: np.ndarray, model: str | None) -> tuple[str | None, str]:
    client = StreamClient(url, model=model)
    await client.connect()
    for i in range(0, len(audio), 1600):
        await client.send_audio(audio[i : i + 1600])
        await asyncio.sleep(0.005)  # interleave the two sessions
    finals = await client.finish(timeout_s=120)
    return client.model_used, " ".join(f.text for f in finals)


def test_health_and_dashboard_list_the_served_models(server):
    health = server.health()["server"]
    assert health["models"] == [TINY, BASE] and health["model"] == TINY
    snapshot = stats(server)
    assert snapshot["server"]["models"] == [TINY, BASE]
    assert set(snapshot["model_batches"]) == {TINY, BASE}


def test_two_sessions_on_different_models_at_once(server):
    before = stats(server)["model_batches"]
    audio = [padded(r) for r in ROWS]

    async def both():
        return await asyncio.gather(stream(server.url, audio[0], None),  # the default
                                    stream(server.url, audio[1], BASE))

    (model_a, text_a), (model_b, text_b) = asyncio.run(both())
    assert (model_a, model_b) == (TINY, BASE)
    for row, text in zip(ROWS, (text_a, text_b), strict=True):
        assert word_error_rate([row["transcript"]], [text]).wer <= 0.2, (row, text)
    after = stats(server)["model_batches"]
    assert after[TINY] > before[TINY] and after[BASE] > before[BASE]


def test_unknown_model_in_hello_is_refused_with_the_served_ones(server):
    async def refused() -> tuple[StreamError, int | None, dict]:
        with pytest.raises(StreamError) as err:
            await StreamClient(server.url, model="whisper-large-v9").connect()
        async with aiohttp.ClientSession() as http, http.ws_connect(
                server.url.replace("http", "ws") + "/v1/stream") as ws:
            await ws.send_json({"type": "hello", "protocol": PROTOCOL_VERSION,
                                "session": "s-unknown-model", "audio": {},
                                "model": "whisper-large-v9"})
            message = await ws.receive_json()
            await ws.receive()
            return err.value, ws.close_code, message

    exc, close_code, message = asyncio.run(refused())
    assert exc.code == "unknown_model" and TINY in exc.message and BASE in exc.message
    assert close_code == CloseCode.UNKNOWN_MODEL == 4404
    assert message["code"] == "unknown_model" and "whisper-large-v9" in message["message"]


def test_openai_upload_with_each_model_and_an_unknown_one(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list().data] == [TINY, BASE]
    assert client.models.retrieve(BASE).id == BASE
    assert client.models.retrieve("whisper-1").id == TINY
    row = ROWS[1]
    data = (DEV / row["path"]).read_bytes()
    before = stats(server)["model_batches"]
    for model in ("whisper-1", BASE):
        text = client.audio.transcriptions.create(model=model, file=("a.wav", data)).text
        assert word_error_rate([row["transcript"]], [text]).wer <= 0.2, (model, text)
    after = stats(server)["model_batches"]
    assert after[TINY] > before[TINY] and after[BASE] > before[BASE]
    with pytest.raises(openai.BadRequestError) as err:
        client.audio.transcriptions.create(model="gpt-9", file=("a.wav", data))
    body = err.value.body
    assert body["param"] == "model" and body["code"] == "model_not_found"
    assert TINY in body["message"] and BASE in body["message"]


def test_wyoming_lists_both_and_transcribe_name_selects(server):
    row = ROWS[0]
    audio = read_audio(DEV / row["path"])
    data = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()

    async def run() -> tuple[Info, str, Error]:
        async with AsyncTcpClient(*server.wyoming_address()) as client:
            await client.write_event(Describe().event())
            info = Info.from_event(await asyncio.wait_for(client.read_event(), 30))
            await client.write_event(Transcribe(name=BASE, language="en").event())
            for event in utterance(data, 16_000, 2, 1):
                await client.write_event(event)
            text = Transcript.from_event(await asyncio.wait_for(client.read_event(), 60)).text
        async with AsyncTcpClient(*server.wyoming_address()) as client:
            await client.write_event(Transcribe(name="whisper-large").event())
            for event in utterance(data, 16_000, 2, 1):
                await client.write_event(event)
            error = Error.from_event(await asyncio.wait_for(client.read_event(), 30))
        return info, text, error

    before = stats(server)["model_batches"][BASE]
    info, text, error = asyncio.run(run())
    [program] = info.asr
    assert [m.name for m in program.models] == [TINY, BASE]
    assert word_error_rate([row["transcript"]], [text]).wer <= 0.2, text
    assert stats(server)["model_batches"][BASE] > before
    assert error.code == "unknown_model" and TINY in error.text and BASE in error.text


def earshot(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "desktop.cli", *args], capture_output=True,
                          text=True, timeout=300)


def test_earshot_transcribe_model_locally_and_through_the_server(server):
    row = ROWS[1]
    path = str(DEV / row["path"])
    for args in (("--model", BASE), ("--server", server.url, "--model", BASE)):
        out = earshot("transcribe", "--format", "json", *args, path)
        assert out.returncode == 0, out.stderr
        [doc] = json.loads(out.stdout)
        assert word_error_rate([row["transcript"]], [doc["text"]]).wer <= 0.2, (args, doc)
    local = earshot("transcribe", "--model", "whisper-huge", path)
    assert local.returncode == 1 and "unknown model 'whisper-huge'" in local.stderr
    assert TINY in local.stderr and BASE in local.stderr  # the catalog's ids
    remote = earshot("transcribe", "--server", server.url, "--model", "whisper-huge", path)
    assert remote.returncode == 1 and "whisper-huge" in remote.stderr
    assert f"served: {TINY}, {BASE}" in remote.stderr


def test_txt_record_lists_models_within_one_txt_string():
    from edge_server.app import TXT_MAX, txt_models

    assert txt_models((TINY, BASE)) == f"{TINY},{BASE}"
    many = tuple(f"model-{i:03d}-" + "x" * 40 for i in range(10))
    value = txt_models(many)
    assert len(f"models={value}".encode()) <= TXT_MAX
    assert value.split(",") == list(many[: len(value.split(","))])  # whole ids, default first
    assert len(value.split(",")) == 4
