"""Failover without loss: real remote server processes, the real embedded local server."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import time
import urllib.request

import numpy as np
import pytest

from desktop.dictation import Dictation, DictationListener, Endpoint, FinalText
from desktop.embedded_server import EmbeddedServer
from desktop.stream_client import StreamClient, StreamError
from edge_server.evaluation import normalize
from tests.conftest import DEV, dev_rows, speech_with_pauses
from tests.desktop.poisoned_audio import POISON, poisoned_speech
from tests.desktop.poisoned_audio import ROWS as POISONED_ROWS
from tests.desktop.silent_server import SilentServer
from tests.server_harness import start_server

ROWS = dev_rows(("pocketsphinx-testdata",))[:8]
AUDIO = speech_with_pauses([DEV / r["path"] for r in ROWS], pause_s=0.9)


@pytest.fixture(scope="module")
def reference_words(engine, read):
    """Words of the reference transcripts that the model also gets right on each clip alone:
    a lost word is then a loss, not a recognition error."""
    words = []
    for r in ROWS:
        alone = normalize(engine.transcribe(read(r["path"]))).split()
        words += [w for w in normalize(r["transcript"]).split() if w in alone]
    return words


@pytest.fixture(scope="module")
def local():
    server = EmbeddedServer(threads=1)
    server.start()
    assert server.wait_ready(120), server.status
    yield Endpoint("This computer", server.url, server.token, "cpu", local=True)
    server.stop()


class Recorder(DictationListener):
    def __init__(self) -> None:
        self.finals: list[FinalText] = []
        self.states: list[tuple[str, str | None]] = []

    def on_final(self, final: FinalText) -> None:
        self.finals.append(final)

    def on_state(self, state, endpoint, detail="") -> None:
        self.states.append((state, endpoint.name if endpoint else None))


async def dictate(endpoints, at_fraction=None, action=None, audio=AUDIO,
                  **kw) -> tuple[Dictation, Recorder]:
    listener = Recorder()
    dictation = Dictation(endpoints, listener, **kw)
    await dictation.start()
    fired = False
    for i in range(0, len(audio), 1600):
        dictation.feed(audio[i : i + 1600])
        await asyncio.sleep(0.02)  # about 5x real time
        if action and not fired and i > len(audio) * at_fraction:
            fired = True
            action()
    await dictation.finish()
    return dictation, listener


def missing_words(finals: list[FinalText], reference: list[str]) -> list[str]:
    heard = normalize(" ".join(f.text for f in finals)).split()
    pool = list(heard)
    missing = []
    for word in reference:
        if word in pool:
            pool.remove(word)
        else:
            missing.append(word)
    return missing


def assert_complete(dictation: Dictation, listener: Recorder, reference: list[str]) -> None:
    assert [f.index for f in listener.finals] == list(range(len(listener.finals)))
    assert all(a.end <= b.start + 0.05 for a, b in zip(listener.finals, listener.finals[1:],
                                                        strict=False))
    missing = missing_words(listener.finals, reference)
    assert len(missing) <= 1, (missing, [f.text for f in listener.finals])


def test_local_only(local, reference_words):
    dictation, listener = asyncio.run(dictate([local]))
    assert dictation.failovers == 0 and listener.states[-1] == ("done", "This computer")
    assert_complete(dictation, listener, reference_words)


@pytest.mark.parametrize("how", ["kill", "sigterm", "freeze"])
def test_remote_failure_mid_dictation_continues_locally_without_loss(local, how, reference_words):
    remote = start_server("--token", "office")
    endpoint = Endpoint("office-box", remote.url, "office", "cpu")
    pid = remote.proc.pid
    actions = {
        "kill": lambda: os.kill(pid, signal.SIGKILL),
        "sigterm": lambda: os.kill(pid, signal.SIGTERM),
        "freeze": lambda: os.kill(pid, signal.SIGSTOP),
    }
    try:
        dictation, listener = asyncio.run(dictate(
            [endpoint, local], at_fraction=0.45, action=actions[how], stall_s=1.5))
    finally:
        if how == "freeze":
            os.kill(pid, signal.SIGCONT)
        remote.stop(signal.SIGKILL)
    assert dictation.failovers == 1 and dictation.endpoint == local
    assert ("fallback", "This computer") in listener.states
    assert {f.endpoint for f in listener.finals} == {"office-box", "This computer"}
    assert_complete(dictation, listener, reference_words)


def stats(server) -> dict:
    with urllib.request.urlopen(server.url + "/api/stats", timeout=5) as resp:
        return json.loads(resp.read())


def test_refused_remote_goes_straight_to_local(local, reference_words):
    remote = start_server("--noop-engine", "--max-sessions", "0")
    try:
        endpoint = Endpoint("full-box", remote.url)
        dictation, listener = asyncio.run(dictate([endpoint, local]))
        refusals = stats(remote)["totals"]["sessions_rejected"]
    finally:
        remote.stop()
    assert refusals == 1  # its Retry-After was not waited for: the local server was there
    assert ("error", "full-box") in listener.states
    assert {f.endpoint for f in listener.finals} == {"This computer"}
    assert_complete(dictation, listener, reference_words)


def test_partials_reach_the_listener(local):
    partials: list[str] = []

    class PartialRecorder(Recorder):
        def on_partial(self, text: str) -> None:
            partials.append(text)

    async def go():
        d = Dictation([local], PartialRecorder())
        await d.start()
        audio = AUDIO[: 16000 * 6]
        for i in range(0, len(audio), 1600):
            d.feed(audio[i : i + 1600])
            await asyncio.sleep(0.1)
        await d.finish()

    asyncio.run(go())
    assert partials and all(isinstance(p, str) for p in partials)
    assert np.mean([len(p) for p in partials]) > 3


def test_the_last_endpoint_left_is_waited_for_as_its_retry_after_says(tmp_path):
    """With nothing to fall back on, a full server's Retry-After is honoured (bounded)."""
    config = tmp_path / "server.toml"
    config.write_text("retry_after_s = 1\n")
    server = start_server("--noop-engine", "--max-sessions", "1", "--config", str(config))

    async def go():
        holder = StreamClient(server.url, partials=False)
        await holder.connect()  # takes the only session
        listener = Recorder()
        dictation = Dictation([Endpoint("one-box", server.url)], listener)
        dictation.feed(np.zeros(16_000, np.float32))
        starting = asyncio.ensure_future(dictation.start())
        while stats(server)["totals"]["sessions_rejected"] < 2:  # refused, waited, refused
            await asyncio.sleep(0.1)
        assert not starting.done()
        await holder.finish(timeout_s=30)  # the session frees up
        await asyncio.wait_for(starting, 30)
        await dictation.finish()
        return dictation, listener

    try:
        dictation, listener = asyncio.run(go())
        refusals = stats(server)["totals"]["sessions_rejected"]
    finally:
        server.stop()
    assert dictation.endpoint.name == "one-box" and refusals >= 2
    assert ("error", "one-box") not in listener.states
    assert listener.states[-1] == ("done", "one-box")


def test_a_server_that_never_answers_the_handshake_times_out_and_is_left():
    with SilentServer(healthy=False) as silent:
        client = StreamClient(silent.url, connect_timeout_s=0.5)

        async def go():
            with pytest.raises(StreamError) as err:
                await client.connect()
            return err.value

        error = asyncio.run(go())
        deadline = time.monotonic() + 10
        while silent.open_connections and time.monotonic() < deadline:
            time.sleep(0.05)
        assert error.code == "timeout" and "0.5 s" in error.message
        assert silent.handshakes == 1 and silent.open_connections == 0  # no orphan socket


def test_a_hung_remote_at_start_falls_back_to_local(local):
    with SilentServer(healthy=False) as silent:
        dictation, listener = asyncio.run(dictate(
            [Endpoint("hung-box", silent.url), local], audio=AUDIO[: 16_000 * 6],
            connect_timeout_s=1.0))
        assert silent.handshakes == 1
    assert ("error", "hung-box") in listener.states
    assert dictation.endpoint == local and listener.finals
    assert {f.endpoint for f in listener.finals} == {"This computer"}


# ---- failed finals -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def poison_words(engine, read):
    """Per sentence, the reference words the model gets right on the clip alone."""
    out = []
    for r in POISONED_ROWS:
        alone = normalize(engine.transcribe(read(r["path"]))).split()
        out.append([w for w in normalize(r["transcript"]).split() if w in alone])
    return out


def test_a_failed_final_is_replayed_and_transcribed_on_the_local_fallback(local, poison_words):
    audio, (p0, p1) = poisoned_speech()
    remote = start_server("--workers", "1", env=POISON)
    try:
        dictation, listener = asyncio.run(dictate([Endpoint("office-box", remote.url), local],
                                                  audio=audio))
        restarts = remote.health()["worker_restarts"]
    finally:
        remote.stop()
    assert restarts >= 2  # the poison really killed the office box's worker
    assert dictation.decode_retries >= 1 and dictation.failed_segments == 0
    assert dictation.complete and ("fallback", "This computer") in listener.states
    finals = listener.finals
    assert [f.index for f in finals] == list(range(len(finals)))
    assert all(f.text and f.error is None for f in finals), finals
    assert all(a.end <= b.start + 0.05 for a, b in itertools.pairwise(finals))
    middle = [f for f in finals if f.start < p1 and f.end > p0]
    assert middle and {f.endpoint for f in middle} == {"This computer"}
    assert len(missing_words(middle, poison_words[1])) <= 1, [f.text for f in middle]
    every_word = [w for words in poison_words for w in words]
    assert len(missing_words(finals, every_word)) <= 1, [f.text for f in finals]


def test_a_segment_no_server_can_decode_is_reported_failed_after_bounded_tries(poison_words):
    """Both endpoints die on the segment: after two tries each it is reported, with
    `error`, and counted (so the app keeps the audio for recovery); the rest is there."""
    audio, (p0, p1) = poisoned_speech()
    remote = start_server("--workers", "1", env=POISON)
    fallback = start_server("--workers", "1", env=POISON)
    try:
        dictation, listener = asyncio.run(dictate(
            [Endpoint("office-box", remote.url), Endpoint("fallback", fallback.url, local=True)],
            audio=audio))
    finally:
        remote.stop()
        fallback.stop()
    finals = listener.finals
    failed = [f for f in finals if f.error]
    assert len(failed) == 1 and failed[0].text == "" and failed[0].error == "decode_failed"
    assert failed[0].start < p1 and failed[0].end > p0
    assert dictation.failed_segments == 1 and not dictation.complete
    assert 1 <= dictation.decode_retries <= 3  # office-box again, fallback, fallback again
    assert [f.index for f in finals] == list(range(len(finals)))
    good = [f for f in finals if not f.error]
    assert len(missing_words(good, poison_words[0] + poison_words[2])) <= 1, finals
