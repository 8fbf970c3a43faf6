"""The OpenAI-compatible API, driven by the official `openai` package against a real server."""

from __future__ import annotations

import asyncio
import io
import itertools
import re
import tempfile
import urllib.request
from pathlib import Path

import aiohttp
import numpy as np
import openai
import pytest
import soundfile as sf
import srt
import webvtt
from prometheus_client.parser import text_string_to_metric_families

from edge_server.evaluation import word_error_rate
from tests.conftest import DEV, dev_rows, speech_with_pauses
from tests.server_harness import start_server, stream_audio

ROWS = dev_rows(("librispeech-test-clean-kw", "pocketsphinx-testdata"))[:4]
UPLOAD_LIMIT_MB = 1.5


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    cfg = tmp_path_factory.mktemp("cfg") / "server.toml"
    cfg.write_text(f"max_upload_mb = {UPLOAD_LIMIT_MB}\n")
    srv = start_server("--config", str(cfg))
    yield srv
    assert srv.stop() == 0


@pytest.fixture(scope="module")
def client(server):
    # loopback needs no token by default; the SDK insists on some API key
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def long_flac(tmp_path_factory) -> tuple[bytes, str]:
    """Four dev sentences with pauses (> 20 s, so it is segmented), as 44.1 kHz stereo FLAC."""
    import soxr

    audio = speech_with_pauses([DEV / r["path"] for r in ROWS], pause_s=1.2)
    assert len(audio) > 20 * 16_000
    hi = soxr.resample(audio, 16_000, 44_100)
    buf = io.BytesIO()
    sf.write(buf, np.stack([hi, hi * 0.8], axis=1), 44_100, format="FLAC")
    return buf.getvalue(), " ".join(r["transcript"] for r in ROWS)


def wer(ref: str, hyp: str) -> float:
    return word_error_rate([ref], [hyp]).wer


def test_models_lists_the_served_model(client):
    ids = [m.id for m in client.models.list()]
    assert ids == ["moonshine-tiny-en"]
    assert client.models.retrieve("whisper-1").id == "moonshine-tiny-en"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o-transcribe")


@pytest.mark.parametrize("fmt", ["json", "text", "srt", "vtt", "verbose_json"])
def test_every_response_format_of_a_segmented_upload(client, long_flac, fmt):
    data, reference = long_flac
    result = client.audio.transcriptions.create(
        model="whisper-1", file=("speech.flac", data), response_format=fmt, language="en")
    if fmt == "json":
        text = result.text
        assert result.usage.type == "duration" and result.usage.seconds >= 20
    elif fmt == "text":
        text = result
    elif fmt == "srt":
        cues = list(srt.parse(result))
        assert len(cues) == len(ROWS)
        assert all(a.end <= b.start for a, b in itertools.pairwise(cues))
        text = " ".join(c.content for c in cues)
    elif fmt == "vtt":
        cues = webvtt.from_buffer(io.StringIO(result)).captions
        assert len(cues) == len(ROWS)
        text = " ".join(c.text for c in cues)
    else:
        assert result.language == "english" and result.duration > 20
        segments = result.segments
        assert [s.id for s in segments] == list(range(len(ROWS)))
        assert all(s.start < s.end <= result.duration + 0.01 for s in segments)
        assert all(a.end <= b.start for a, b in itertools.pairwise(segments))
        assert " ".join(s.text for s in segments) == result.text
        text = result.text
    assert wer(reference, text) < 0.1, text


def test_verbose_json_with_segment_timestamps_and_ignored_prompt(client):
    path = DEV / ROWS[0]["path"]
    result = client.audio.transcriptions.create(
        model="moonshine-tiny-en", file=path.open("rb"), response_format="verbose_json",
        timestamp_granularities=["segment"], prompt="ignored", temperature=0.0)
    assert len(result.segments) == 1 and result.segments[0].compression_ratio > 0
    assert wer(ROWS[0]["transcript"], result.text) < 0.2


@pytest.mark.parametrize("suffix", [".m4a", ".webm"])
def test_browser_and_phone_recordings(client, tmp_path, suffix):
    from edge_server.audio import read_audio
    from tests.audio_encode import encode

    path = encode(read_audio(DEV / ROWS[1]["path"]), 16_000, tmp_path / f"memo{suffix}")
    result = client.audio.transcriptions.create(model="whisper-1", file=path.open("rb"))
    assert wer(ROWS[1]["transcript"], result.text) < 0.2, result.text


def test_silence_gives_empty_text(client):
    buf = io.BytesIO()
    sf.write(buf, np.zeros(16_000 * 3, np.float32), 16_000, format="WAV")
    assert client.audio.transcriptions.create(model="whisper-1",
                                              file=("quiet.wav", buf.getvalue())).text == ""


BAD_REQUESTS = {
    "not-audio": ({"model": "whisper-1"}, ("notes.wav", b"this is not audio" * 50), "file"),
    "empty-file": ({"model": "whisper-1"}, ("empty.wav", b""), "file"),
    "unknown-model": ({"model": "gpt-9"}, None, "model"),
    "bad-format": ({"model": "whisper-1", "response_format": "xml"}, None, "response_format"),
    "other-language": ({"model": "whisper-1", "language": "de"}, None, "language"),
    "word-timestamps": ({"model": "whisper-1", "response_format": "verbose_json",
                         "timestamp_granularities": ["word"]}, None, "timestamp_granularities"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_openai_style_errors(client, case):
    kwargs, file, param = BAD_REQUESTS[case]
    file = file or ("ok.wav", (DEV / ROWS[0]["path"]).read_bytes())
    with pytest.raises(openai.BadRequestError) as err:
        client.audio.transcriptions.create(file=file, **kwargs)
    body = err.value.body
    assert err.value.status_code == 400 and body["type"] == "invalid_request_error"
    assert body["param"] == param and body["message"]


def test_missing_fields_and_wrong_content_type(server):
    url = server.url + "/v1/audio/transcriptions"
    wav = (DEV / ROWS[0]["path"]).read_bytes()

    def form(**fields) -> aiohttp.FormData:
        data = aiohttp.FormData()
        for name, value in fields.items():
            data.add_field(name, value, filename="a.wav" if isinstance(value, bytes) else None)
        return data

    async def post_all():
        async with aiohttp.ClientSession() as http:
            out = []
            for kwargs in ({"data": form(file=wav)}, {"data": form(model="whisper-1", note=b"x")},
                           {"json": {"model": "whisper-1"}}):
                async with http.post(url, **kwargs) as resp:
                    out.append((resp.status, await resp.json()))
            return out

    (status, body), *refused = asyncio.run(post_all())
    assert status == 200 and body["text"]  # no `model`: the server's default model
    for (status, body), param in zip(refused, ("file", None), strict=True):
        assert status == 400 and body["error"]["param"] == param and body["error"]["message"]


def test_too_large_upload_is_refused_while_streaming(client, server):
    big = io.BytesIO()
    sf.write(big, np.random.default_rng(0).uniform(-0.1, 0.1, 16_000 * 60).astype(np.float32),
             16_000, format="WAV", subtype="PCM_16")  # 1.9 MB > 1.5 MB limit
    with pytest.raises(openai.APIStatusError) as err:
        client.audio.transcriptions.create(model="whisper-1", file=("big.wav", big.getvalue()))
    assert err.value.status_code == 413
    assert err.value.body["code"] == "file_too_large" and "1.5 MB" in err.value.body["message"]
    # the server is fine afterwards, and left no upload behind in its temp folder
    assert client.models.list().data
    assert not list(Path(tempfile.gettempdir()).glob("earshot-upload-*"))


def test_uploads_share_the_scheduler_with_live_streams(client, server):
    audio = speech_with_pauses([DEV / r["path"] for r in ROWS[:2]], pause_s=0.8)
    path = DEV / ROWS[2]["path"]

    async def both():
        stream = asyncio.create_task(stream_audio(server.url, audio, realtime=False))
        upload = asyncio.to_thread(client.audio.transcriptions.create, model="whisper-1",
                                   file=path.open("rb"))
        return await asyncio.gather(stream, upload)

    (finals, _), upload = asyncio.run(both())
    assert len(finals) == 2 and wer(ROWS[2]["transcript"], upload.text) < 0.2
    with urllib.request.urlopen(server.url + "/metrics") as resp:
        families = {f.name: f for f in text_string_to_metric_families(resp.read().decode())}
    decoded = {s.labels["kind"]: s.value for s in families["earshot_decoded_requests"].samples
               if s.name.endswith("_total")}
    assert decoded.get("clip", 0) >= 1 and decoded.get("final", 0) >= 2


def test_token_required_when_auth_covers_loopback(tmp_path):
    token_file = tmp_path / "token"
    srv = start_server("--noop-engine", "--auth", "all", "--token-file", str(token_file),
                       "--config", _write(tmp_path, "max_auth_failures = 3\n"))
    try:
        token = token_file.read_text().strip()
        assert re.fullmatch(r"[\w-]{40,}", token)
        wav = (DEV / ROWS[0]["path"]).read_bytes()
        good = openai.OpenAI(base_url=srv.url + "/v1", api_key=token, max_retries=0)
        assert good.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav)).text
        bad = openai.OpenAI(base_url=srv.url + "/v1", api_key="guess", max_retries=0)
        for _ in range(3):
            with pytest.raises(openai.AuthenticationError) as err:
                bad.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav))
            assert err.value.body["code"] == "invalid_api_key"
        with pytest.raises(openai.RateLimitError) as err:  # locked out, even with the token
            good.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav))
        assert int(err.value.response.headers["Retry-After"]) > 0
    finally:
        srv.stop()


def _write(folder, text: str) -> str:
    path = folder / "server.toml"
    path.write_text(text)
    return str(path)


@pytest.fixture(scope="module")
def format_files(tmp_path_factory) -> dict:
    """The dev utterance ROWS[1] in every allowed format (tests/upload_files.FORMATS)."""
    from edge_server.audio import read_audio
    from tests.upload_files import FORMATS, encode_format

    folder = tmp_path_factory.mktemp("formats")
    speech = read_audio(DEV / ROWS[1]["path"])
    return {name: encode_format(speech, folder, name).read_bytes() for name in FORMATS}


def _upload(client, name: str, data: bytes):
    """The response, or the APIStatusError it raised."""
    try:
        return client.audio.transcriptions.create(model="whisper-1", file=(name, data))
    except openai.APIStatusError as err:
        return err


def test_every_allowed_format_is_read_from_its_content_not_its_name(client, format_files):
    names = list(format_files)
    for i, (fmt, data) in enumerate(format_files.items()):
        wrong = names[(i + 1) % len(names)]  # named as the next format in the list
        result = _upload(client, f"recording.{wrong}", data)
        assert not isinstance(result, openai.APIStatusError), (fmt, result)
        assert wer(ROWS[1]["transcript"], result.text) < 0.25, (fmt, result.text)


def test_truncated_files_get_a_transcript_or_a_documented_error(client, server,
                                                                 format_files):
    from concurrent.futures import ThreadPoolExecutor

    pid = server.proc.pid
    cases = [(fmt, cut) for fmt, data in format_files.items()
             for cut in (16, 300, len(data) // 3, len(data) * 9 // 10)]

    def one(case):
        fmt, cut = case
        return case, _upload(client, f"cut.{fmt}", format_files[fmt][:cut])

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, cases))
    transcripts = 0
    for (fmt, cut), result in results:
        if isinstance(result, openai.APIStatusError):
            assert result.status_code == 400, (fmt, cut, result.body)
            assert result.body["code"] in ("invalid_file", "unsupported_format"), result.body
            assert result.body["param"] == "file" and "\n" not in result.body["message"]
        else:
            transcripts += 1
    assert transcripts >= len(format_files)  # most formats are readable up to the cut
    assert server.proc.pid == pid and server.health()["status"] == "ready"


def test_other_formats_are_refused_with_the_allowed_list(client, tmp_path):
    from edge_server.audio import read_audio
    from tests.upload_files import encode

    speech = read_audio(DEV / ROWS[0]["path"])
    au = encode(speech, tmp_path / "sun.au", "au", "pcm_s16be", 16_000).read_bytes()
    g726 = encode(speech, tmp_path / "g726.wav", "wav", "g726", 8_000, 32_000).read_bytes()
    for name, data in (("speech.wav", au), ("speech.wav", g726),
                       ("notes.m4a", b"meeting notes: nothing audible here\n" * 30)):
        result = _upload(client, name, data)
        assert isinstance(result, openai.BadRequestError), result
        assert result.body["code"] == "unsupported_format", result.body
        assert "wav, flac, mp3, ogg/opus, m4a/mp4/mov/3gp, webm/mkv" in result.body["message"]
    # an allowed format's signature with nothing behind it: a damaged file, said so
    result = _upload(client, "speech.wav", b"ID3 but then nothing of the sort " * 30)
    assert isinstance(result, openai.BadRequestError) and result.body["code"] == "invalid_file"
    assert "looks like mp3" in result.body["message"]


def test_too_large_upload_announced_with_expect_is_refused_before_its_body(server):
    """curl's way for big files: `Expect: 100-continue`; the 413 comes before any byte."""
    size = int(UPLOAD_LIMIT_MB * 1_000_000) * 2
    sent = []

    async def body():
        sent.append(1)
        yield bytes(size)

    async def post():
        headers = {"Content-Type": "multipart/form-data; boundary=x",
                   "Content-Length": str(size)}
        async with aiohttp.ClientSession() as http, http.post(
                server.url + "/v1/audio/transcriptions", data=body(), headers=headers,
                expect100=True) as resp:
            return resp.status, await resp.json()

    status, body_json = asyncio.run(post())
    assert status == 413 and body_json["error"]["code"] == "file_too_large"
    assert not sent, "the client was asked for the body"
