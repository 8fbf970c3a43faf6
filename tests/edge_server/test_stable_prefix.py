"""Partials carry the tokens of the previous partial(s) of their window as a draft prefix
(sessions.PREFIX_AGREE; LocalAgreement-n), and decode to the same text as without; end to
end: a real EdgeServer (in this process, so its scheduler's requests can be watched), a
real worker process with Moonshine tiny, real Silero VAD, a real WebSocket client."""

from __future__ import annotations

import asyncio
import time

import numpy as np
from aiohttp import web

from edge_server.app import EdgeServer
from edge_server.audio import read_audio
from edge_server.config import ServerSettings
from edge_server.partial_policy import common_prefix
from edge_server.sessions import PREFIX_AGREE
from tests.conftest import DEV
from tests.server_harness import stream_audio

SR = 16_000


async def run_server(audio: np.ndarray) -> tuple[list, list, list]:
    """Stream `audio` at real time with partials, then again as fast as possible without;
    returns (requests submitted to the scheduler, finals with partials, finals without)."""
    server = EdgeServer(ServerSettings(auth="none", workers=1, threads=1, device="cpu"))
    submitted: list = []
    submit = server.scheduler.submit

    def watch(req) -> None:  # the real scheduler still gets every request
        submitted.append(req)
        submit(req)

    server.scheduler.submit = watch
    runner = web.AppRunner(server.make_app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while not server.pool.ready_count:
            assert time.monotonic() < deadline and not server.startup_error
            await asyncio.sleep(0.1)
        with_partials, _ = await stream_audio(url, audio, realtime=True)
        without, _ = await stream_audio(url, audio, partials=False)
    finally:
        await runner.cleanup()
    return submitted, with_partials, without


def test_partials_carry_the_prefix_their_last_partials_agreed_on_and_finals_none(engine):
    speech = read_audio(DEV / "sherpa-test-wavs" / "0.wav")  # 6.6 s, one sentence
    audio = np.concatenate([np.zeros(SR // 2, np.float32), speech, np.zeros(SR, np.float32)])
    submitted, with_partials, without = asyncio.run(run_server(audio))

    partials = [r for r in submitted if r.kind == "partial"]
    finals = [r for r in submitted if r.kind == "final"]
    assert finals and all(r.prefix == () for r in finals)
    assert len(partials) >= 5
    # every partial's prefix is the common prefix of the PREFIX_AGREE decoded partials of
    # its window before it (none for the first ones of a window) ...
    drafted = []
    for i, req in enumerate(partials):
        window = [p.tokens for p in partials[:i] if (p.segment_id, p.start) == (
            req.segment_id, req.start) and p.tokens is not None]
        if len(window) < PREFIX_AGREE:
            assert req.prefix == ()
            continue
        last = window[-PREFIX_AGREE:]
        expected = last[0]
        for tokens in last[1:]:
            expected = common_prefix(expected, tokens)
        assert req.prefix == expected
        if expected and req.tokens is not None:
            drafted.append(req)
    assert len(drafted) >= 3
    # ... and the draft changes nothing: each decodes to its audio's free decode
    for req in drafted:
        assert engine.decode_batch([req.audio])[0].tokens == req.tokens
    # partials never change a final: the same text as without partials
    assert [f.text for f in with_partials] == [f.text for f in without]
    assert "lamps" in with_partials[0].text
