"""Failover without loss: real remote server processes, the real embedded local server."""

from __future__ import annotations

import asyncio
import os
import signal

import numpy as np
import pytest

from desktop.dictation import Dictation, DictationListener, Endpoint, FinalText
from desktop.embedded_server import EmbeddedServer
from edge_server.evaluation import normalize
from tests.conftest import DEV, dev_rows, speech_with_pauses
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


async def dictate(endpoints, at_fraction=None, action=None, **kw) -> tuple[Dictation, Recorder]:
    listener = Recorder()
    dictation = Dictation(endpoints, listener, **kw)
    await dictation.start()
    fired = False
    for i in range(0, len(AUDIO), 1600):
        dictation.feed(AUDIO[i : i + 1600])
        await asyncio.sleep(0.02)  # about 5x real time
        if action and not fired and i > len(AUDIO) * at_fraction:
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


def test_refused_remote_goes_straight_to_local(local, reference_words):
    remote = start_server("--noop-engine", "--max-sessions", "0")
    try:
        endpoint = Endpoint("full-box", remote.url)
        dictation, listener = asyncio.run(dictate([endpoint, local]))
    finally:
        remote.stop()
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
