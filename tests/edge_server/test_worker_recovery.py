"""Inference isolation: workers that die lose nothing; a poison segment fails alone."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import numpy as np

from edge_server.evaluation import word_error_rate
from tests.conftest import DEV, dev_rows, speech_with_pauses
from tests.server_harness import start_server, stream_audio

ROWS = dev_rows(("pocketsphinx-testdata",))[:6]


def test_killing_a_worker_mid_stream_loses_no_final():
    server = start_server("--workers", "1")
    try:
        audio = speech_with_pauses([DEV / r["path"] for r in ROWS], pause_s=0.8)
        killed = {"pid": None}

        async def kill_worker(client, sent):
            if killed["pid"] is None and sent > len(audio) * 0.4:
                (pid,) = server.health()["worker_pids"]
                os.kill(pid, signal.SIGKILL)
                killed["pid"] = pid
                await asyncio.sleep(0.05)

        events: list = []
        finals, _ = asyncio.run(stream_audio(server.url, audio, during=kill_worker,
                                             events=events, partials=False))
        assert killed["pid"] is not None
        assert [f.segment for f in finals] == list(range(len(ROWS)))
        assert [e["segment"] for _, e in events if e["type"] == "final"] == list(range(len(ROWS)))
        score = word_error_rate([r["transcript"] for r in ROWS], [f.text for f in finals])
        assert score.wer < 0.1 and not any(f.error for f in finals)
        deadline = time.monotonic() + 30
        while server.health()["workers_ready"] < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        health = server.health()
        assert health["worker_restarts"] >= 1 and killed["pid"] not in health["worker_pids"]
    finally:
        assert server.stop() == 0


def test_a_segment_that_kills_workers_twice_fails_alone():
    """Fault injection: the worker exits abruptly on a full-scale sample."""
    server = start_server("--workers", "1",
                          env={"EARSHOT_WORKER_FAULT": "crash-if-peak-above=0.999"})
    try:
        from edge_server.audio import read_audio

        parts = [read_audio(DEV / r["path"]) for r in ROWS[:3]]
        poisoned = parts[1].copy()
        poisoned[len(poisoned) // 2] = 1.0
        gap = np.zeros(16000, np.float32)
        audio = np.concatenate([gap, parts[0], gap, poisoned, gap, parts[2], gap])
        events: list = []
        finals, _ = asyncio.run(stream_audio(server.url, audio, events=events, partials=False))
        assert [f.segment for f in finals] == [0, 1, 2]
        assert finals[1].error == "decode_failed" and finals[1].text == ""
        assert finals[0].text and finals[2].text and not finals[0].error
        errors = [e for _, e in events if e["type"] == "error"]
        assert errors and errors[0]["code"] == "decode_failed" and errors[0]["fatal"] is False
        assert server.health()["worker_restarts"] >= 2
    finally:
        server.stop()
