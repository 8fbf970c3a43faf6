"""The upload decoder: a real child process per file, its allowlist, limits and failures."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time

import numpy as np
import psutil
import pytest

from edge_server.audio import AudioError, read_audio
from edge_server.upload_decoder import (
    AudioTooLong,
    DecodeLimits,
    DecoderFailed,
    DecoderZygote,
    UnsupportedFormat,
    UploadDecoder,
)
from edge_server.upload_decoder_child import SUPPORTED_TEXT, TEST_FAULTS_ENV, sniff
from tests.conftest import DEV, dev_rows
from tests.upload_files import FORMATS, encode, encode_format, long_opus

ROW = dev_rows(("librispeech-test-clean-kw",))[0]
EXPECTED_FORMAT = {"wav": "wav", "flac": "flac", "mp3": "mp3", "ogg": "ogg/opus",
                   "m4a": "m4a/mp4/mov/3gp", "mp4": "m4a/mp4/mov/3gp", "webm": "webm/mkv",
                   "aac": "aac", "aiff": "aiff", "caf": "caf", "wma": "wma", "mpeg": "mpeg"}


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return read_audio(DEV / ROW["path"])


@pytest.fixture(scope="module")
def files(tmp_path_factory, speech) -> dict:
    folder = tmp_path_factory.mktemp("formats")
    return {name: encode_format(speech, folder, name) for name in FORMATS}


async def _decode(path, limits: DecodeLimits | None, zygote: DecoderZygote):
    async with UploadDecoder(path, limits, zygote) as decoder:
        blocks = [b async for b in decoder]
    return decoder.info, np.concatenate(blocks) if blocks else np.zeros(0, np.float32)


def decode(path, limits: DecodeLimits | None = None) -> tuple[dict, np.ndarray]:
    """(info, audio) of `path` through a zygote of its own."""
    async def run():
        zygote = DecoderZygote()
        try:
            return await _decode(path, limits, zygote)
        finally:
            await zygote.close()

    return asyncio.run(run())


def decode_many(paths: list) -> list:
    """(info, audio) or the AudioError raised, for each path, through one zygote."""
    async def run():
        zygote = DecoderZygote()
        results = []
        try:
            for path in paths:
                try:
                    results.append(await _decode(path, None, zygote))
                except AudioError as exc:
                    results.append(exc)
        finally:
            await zygote.close()
        return results

    return asyncio.run(run())


def test_every_allowed_format_decodes_to_16k_mono(files, speech):
    assert set(EXPECTED_FORMAT) == set(FORMATS)
    for name, path in files.items():
        info, audio = decode(path)
        assert info["format"] == EXPECTED_FORMAT[name], (name, info)
        assert audio.dtype == np.float32
        assert abs(len(audio) - len(speech)) < 0.15 * 16_000, (name, len(audio) / 16_000)
        if name in ("wav", "aiff", "caf"):  # lossless at 16 kHz: the very samples
            assert np.abs(audio - read_audio(path)).max() < 1e-4, name


def test_the_format_comes_from_the_content_not_the_name(files, tmp_path):
    for real, fake in (("wav", "mp3"), ("mp3", "wav"), ("m4a", "ogg"), ("flac", "txt")):
        renamed = tmp_path / f"mislabelled.{fake}"
        shutil.copy(files[real], renamed)
        info, audio = decode(renamed)
        assert info["format"] == EXPECTED_FORMAT[real] and len(audio) > 16_000


def test_other_formats_and_codecs_are_refused(tmp_path, speech):
    cases = {
        "sun.au": encode(speech, tmp_path / "sun.au", "au", "pcm_s16be", 16_000),
        "sony.w64": encode(speech, tmp_path / "sony.w64", "w64", "pcm_s16le", 16_000),
        "g726.wav": encode(speech, tmp_path / "g726.wav", "wav", "g726", 8_000, 32_000),
    }
    text = tmp_path / "notes.wav"
    text.write_text("these are my meeting notes, not audio\n" * 40)
    cases["notes.wav"] = text
    for name, path in cases.items():
        with pytest.raises(UnsupportedFormat) as err:
            decode(path)
        assert SUPPORTED_TEXT in str(err.value) and "\n" not in str(err.value), name
        assert ("codec g726" in str(err.value)) == (name == "g726.wav")


def test_truncated_files_decode_what_is_there_or_fail_cleanly(files, tmp_path, speech):
    full = len(speech) / 16_000
    cases = []
    for name, path in files.items():
        data = path.read_bytes()
        for cut in (16, 300, len(data) // 2, len(data) * 9 // 10):
            broken = tmp_path / f"cut-{cut}.{name}"
            broken.write_bytes(data[:cut])
            cases.append((name, cut, len(data), broken))
    for (name, cut, size, broken), result in zip(cases, decode_many([c[3] for c in cases]),
                                                 strict=True):
        if isinstance(result, AudioError):
            assert not isinstance(result, DecoderFailed), (name, cut, result)
            assert "\n" not in str(result) and str(broken) not in str(result)
            continue
        seconds = len(result[1]) / 16_000
        assert seconds <= full + 0.2, (name, cut)
        if cut == size // 2 and name in ("wav", "flac", "mp3", "ogg", "aiff"):
            assert 0.3 * full < seconds < 0.7 * full, name  # streamable: half is half


def test_sniff_names_only_allowed_formats(files):
    for name, path in files.items():
        assert sniff(path.read_bytes()[:16]) == EXPECTED_FORMAT[name], name
    assert sniff(b"hello, world....") is None and sniff(b"") is None


def test_audio_longer_than_the_limit(tmp_path, speech):
    limits = DecodeLimits(max_audio_s=5.0)
    stated = encode(speech, tmp_path / "a.ogg", "ogg", "libopus", 48_000, 24_000)
    counted = encode(speech, tmp_path / "a.mp3", "mp3", "libmp3lame", 22_050, 48_000)
    live = encode(speech, tmp_path / "a.webm", "webm", "libopus", 48_000, 24_000,
                  options={"live": "1"})

    async def enter(path):
        zygote = DecoderZygote()
        try:
            async with UploadDecoder(path, limits, zygote):
                return "opened"
        finally:
            await zygote.close()

    for path in (stated, counted):  # refused when opened, before a single block
        with pytest.raises(AudioTooLong, match="max_upload_audio_s"):
            asyncio.run(enter(path))
    assert asyncio.run(enter(live)) == "opened"  # no duration stated: counted as decoded
    with pytest.raises(AudioTooLong, match=r"at most 5 s \(5 s\)"):
        decode(live, limits)
    assert len(decode(live, DecodeLimits(max_audio_s=60))[1]) > 8 * 16_000


@pytest.mark.parametrize(("magic", "limits", "timed_out", "words"), [
    ("EARSHOT-TEST-ABORT", DecodeLimits(), False, "crashed on this file (signal SIGABRT)"),
    ("EARSHOT-TEST-SPIN", DecodeLimits(timeout_s=60, cpu_base_s=1), True, "of CPU time"),
    ("EARSHOT-TEST-SLEEP", DecodeLimits(timeout_s=1.5), True, "no audio for 1.5 s"),
])
def test_a_crashing_or_hanging_decoder_raises_and_is_gone(tmp_path, monkeypatch, magic,
                                                          limits, timed_out, words):
    monkeypatch.setenv(TEST_FAULTS_ENV, "1")
    path = tmp_path / "fault.wav"
    path.write_bytes(magic.encode() + bytes(2000))
    with pytest.raises(DecoderFailed) as err:
        decode(path, limits)
    assert err.value.timed_out == timed_out and words in str(err.value), str(err.value)


def test_the_child_waits_for_the_reader_and_dies_with_the_request(tmp_path):
    """Backpressure: after one block is read the child blocks on its pipe (it would decode
    the 10 minutes in about a second otherwise); leaving early kills it."""
    path, seconds, _ = long_opus(tmp_path / "long.ogg", loops=6)

    async def run():
        zygote = DecoderZygote()
        async with UploadDecoder(path, None, zygote) as decoder:
            blocks = aiter(decoder)
            first = await anext(blocks)
            child = psutil.Process(decoder.pid)
            deadline = time.monotonic() + 30
            last = -1.0
            while (cpu := sum(child.cpu_times()[:2])) != last:  # until it stops working
                assert time.monotonic() < deadline
                last = cpu
                await asyncio.sleep(0.5)
            alive = child.is_running() and child.status() != psutil.STATUS_ZOMBIE
            read = decoder.samples
            await blocks.aclose()
        await zygote.close()
        return first, alive, read, child

    first, alive, read, child = asyncio.run(run())
    assert len(first) == 5 * 16_000 and alive and read == len(first)
    assert read < seconds * 16_000 / 10
    assert not child.is_running()


def test_an_empty_file(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(AudioError, match="empty"):
        decode(empty)


def test_a_video_gives_its_sound_track(tmp_path, speech):
    """An mp4 with a picture (stream 0) and AAC sound: the sound is decoded, the picture's
    codec is not on the allowlist and is never opened."""
    from fractions import Fraction

    import av

    path = tmp_path / "call.mp4"
    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=10)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        sound = container.add_stream("aac", rate=16_000, layout="mono")
        for i in range(int(len(speech) / 16_000 * 10)):
            picture = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i % 255, np.uint8),
                                                 format="rgb24")
            picture.pts = i
            for packet in video.encode(picture):
                container.mux(packet)
        resampler = av.AudioResampler(format=sound.format.name, layout="mono", rate=16_000)
        frame = av.AudioFrame.from_ndarray(speech.reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate, frame.time_base, frame.pts = 16_000, Fraction(1, 16_000), 0
        for out in [*resampler.resample(frame), *resampler.resample(None)]:
            for packet in sound.encode(out):
                container.mux(packet)
        for stream in (video, sound):
            for packet in stream.encode(None):
                container.mux(packet)
    info, audio = decode(path)
    assert info["codec"] == "aac" and abs(len(audio) - len(speech)) < 0.15 * 16_000


def test_a_zygote_that_died_is_replaced(files):
    async def run():
        zygote = DecoderZygote()
        try:
            await _decode(files["wav"], None, zygote)
            first = zygote.pid
            os.kill(first, signal.SIGKILL)
            await asyncio.sleep(0.5)
            _, audio = await _decode(files["flac"], None, zygote)
            return first, zygote.pid, audio
        finally:
            await zygote.close()

    first, second, audio = asyncio.run(run())
    assert second != first and len(audio) > 16_000
    assert not psutil.pid_exists(second) or psutil.Process(second).status() == "zombie"
