"""PartialPlanner (cadence, speech-only, bounded window), StablePrefix (LocalAgreement-2)
and ShedGate (hysteresis), with an injected clock; plus a real server: partials at the
configured cadence while speaking, none during a long pause inside a segment, and bad
settings refused at load."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import numpy as np
import pytest

from edge_server.audio import read_audio
from edge_server.config import load_settings
from edge_server.partial_policy import (
    PartialConfig,
    PartialJob,
    PartialPlanner,
    ShedGate,
    StablePrefix,
    common_prefix,
)
from edge_server.scheduler import DecodeRequest, Scheduler
from edge_server.vad import WINDOW
from edge_server.workers import WorkerConfig, WorkerPool
from tests.conftest import DEV
from tests.server_harness import start_server, stream_audio

SR = 16_000
NO_CHUNKS = PartialConfig(interval_ms=400, chunk_s=30, min_chunk_s=1, max_chunk_s=30)


def probs_for(start: int, end: int, speech: bool | list[tuple[int, int]]) -> list:
    """(window start, prob) for windows in [start, end): 0.9 inside speech spans."""
    out = []
    for w0 in range(start - start % WINDOW, end - WINDOW + 1, WINDOW):
        if isinstance(speech, bool):
            p = 0.9 if speech else 0.05
        else:
            p = 0.9 if any(a <= w0 < b for a, b in speech) else 0.05
        out.append((w0, p))
    return out


def drive(planner: PartialPlanner, seconds: float, speech, frame: int = 1600,
          seg_start: int = 0) -> list:
    """Feed a segment frame by frame, answering each job at once with "w<i>"."""
    jobs = []
    for end in range(seg_start + frame, seg_start + int(seconds * SR) + 1, frame):
        job = planner.plan(0, seg_start, end, probs_for(seg_start, end, speech))
        if job is not None:
            jobs.append((end, job, planner.done(job, f"w{len(jobs)}")))
    return jobs


def test_cadence_in_stream_time_while_speaking():
    planner = PartialPlanner(NO_CHUNKS)
    jobs = drive(planner, 4.0, speech=True)
    ends = [end for end, _, _ in jobs]
    assert ends[0] == 4800  # first one once the tail reaches min_tail_ms (300 ms)
    assert np.diff(ends).tolist() == [6400] * (len(ends) - 1)  # then every 400 ms
    assert all(job.start == 0 and job.end == end for end, job, _ in jobs)


def test_no_partial_when_only_silence_arrived():
    # speech 0-1.5 s, silence 1.5-4 s, speech again from 4 s (one open segment)
    spans = [(0, int(1.5 * SR)), (4 * SR, 6 * SR)]
    planner = PartialPlanner(NO_CHUNKS)
    jobs = drive(planner, 6.0, speech=spans)
    ends = [end for end, _, _ in jobs]
    quiet = [e for e in ends if 1.5 * SR + 0.4 * SR < e <= 4 * SR]
    assert quiet == []  # only silence since the previous partial: nothing decoded
    assert any(e > 4 * SR for e in ends)  # speech again: partials again
    assert planner.skipped_silence >= 4
    # the same audio with the rule off gets partials through the pause (the old cost)
    old = PartialPlanner(replace(NO_CHUNKS, need_speech=False))
    assert len(drive(old, 6.0, speech=spans)) > len(jobs) + 4


def test_window_is_bounded_and_chunks_commit_at_pauses():
    cfg = PartialConfig(interval_ms=400, chunk_s=3.0, min_chunk_s=1.0, max_chunk_s=6.0,
                        edge_ms=100)
    # one quiet VAD window (a pause, at ~2.0 s), then speech that never pauses
    dip = 63 * WINDOW
    spans = [(0, dip), (dip + WINDOW, 20 * SR)]
    planner = PartialPlanner(cfg)
    jobs = drive(planner, 14.0, speech=spans)
    longest = max(job.end - job.start for _, job, _ in jobs)
    assert longest <= 6.4 * SR  # never more than max_chunk_s + one interval decoded
    commits = [job for _, job, _ in jobs if job.commit]
    assert commits[0].start == 0 and commits[0].end == dip + WINDOW // 2  # at the pause
    # no pause after it: the tail grows past chunk_s, then is cut anyway at max_chunk_s
    assert 6.0 * SR <= commits[1].end - commits[1].start <= 6.4 * SR
    assert commits[1].start == commits[0].end
    first_tails = [job for end, job, _ in jobs if not job.commit and job.start == dip + 256]
    assert max(j.end - j.start for j in first_tails) > 3.0 * SR  # chunk_s alone cuts nothing
    # the text shown is every committed chunk's text, then the tail's, in order
    _, last_job, last_text = jobs[-1]
    assert not last_job.commit
    words = last_text.split()
    assert words[-1] == f"w{len(jobs) - 1}"
    assert words[:-1] == [f"w{i}" for i, (_, j, _) in enumerate(jobs) if j.commit]


def test_dropped_job_is_planned_again_and_a_new_segment_starts_afresh():
    cfg = PartialConfig(interval_ms=400, chunk_s=3.0, min_chunk_s=1.0)
    planner = PartialPlanner(cfg)
    speech = probs_for(0, 5 * SR, [(0, 2 * SR), (2 * SR + WINDOW, 5 * SR)])  # a pause at 2 s
    job = planner.plan(0, 0, int(3.2 * SR), speech)
    assert job is not None and job.commit
    assert planner.done(job, None) is None  # dropped: nothing committed
    again = planner.plan(0, 0, int(3.7 * SR), speech)
    assert again is not None and again.commit and again.start == 0
    assert planner.done(again, "hello there") == "hello there"
    tail = planner.plan(0, 0, int(4.2 * SR), speech)
    assert tail is not None and not tail.commit and tail.start == again.end
    assert planner.done(tail, " world ") == "hello there world"
    # next segment: nothing of the old one carries over
    nxt = planner.plan(1, 5 * SR, 5 * SR + 8000, probs_for(5 * SR, 5 * SR + 8000, True))
    assert nxt is not None and nxt.start == 5 * SR and not nxt.commit
    assert planner.done(nxt, "new") == "new"
    assert planner.done(tail, "stale") is None  # a late answer for the old segment


def test_bad_partial_config_is_refused():
    with pytest.raises(ValueError, match="partial_min_chunk_s"):
        PartialConfig(chunk_s=1.0, min_chunk_s=1.0)
    with pytest.raises(ValueError, match="partial_max_chunk_s"):
        PartialConfig(chunk_s=3.0, max_chunk_s=2.0)
    with pytest.raises(ValueError, match="partial_interval_ms"):
        PartialConfig(interval_ms=10)
    with pytest.raises(ValueError, match="degrade_recover_s"):
        ShedGate(0.8, 1.0, 1.0)
    with pytest.raises(ValueError, match="partial_min_chunk_s"):
        load_settings(None, {"partial_chunk_s": 2.0, "partial_min_chunk_s": 2.5})
    with pytest.raises(ValueError, match="degrade_recover_s"):
        load_settings(None, {"degrade_recover_s": 5.0})


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def lateness_series(seconds: float, step: float = 0.01, seed: int = 0) -> list[float]:
    """A server hovering around a 0.8 s threshold: 0.8 +- 0.3 s noise, every 10 ms."""
    rng = np.random.default_rng(seed)
    return list(0.8 + 0.3 * np.sin(np.arange(0, seconds, step) * 7) *
                rng.uniform(0.5, 1.0, int(seconds / step)))


def count_changes(gate: ShedGate, clock: Clock, series: list[float], step: float) -> int:
    for value in series:
        clock.t += step
        gate.update(value)
    return gate.changes


def test_shed_gate_hysteresis_stops_flapping():
    series = lateness_series(60)
    clock = Clock()
    plain = count_changes(ShedGate(0.8, clock=clock), clock, series, 0.01)
    clock = Clock()
    gate = ShedGate(0.8, 0.4, 2.0, clock=clock)
    held = count_changes(gate, clock, series, 0.01)
    assert plain > 100  # thresholding alone flips many times a minute
    assert held <= 2  # on once, and never calm for 2 s while hovering


def test_shed_gate_turns_off_only_after_the_hold():
    clock = Clock()
    gate = ShedGate(0.8, 0.4, 2.0, clock=clock)
    assert gate.update(0.9) is True
    clock.t = 1.0
    assert gate.update(0.3) is True  # calm starts
    clock.t = 2.5
    assert gate.update(0.5) is True  # above the lower threshold: calm broken
    clock.t = 3.0
    assert gate.update(0.1) is True
    clock.t = 4.9
    assert gate.update(0.1) is True
    clock.t = 5.0
    assert gate.update(0.1) is False  # 2 s below 0.4 s
    assert gate.changes == 2
    assert gate.update(0.8) is False  # on needs strictly more than 0.8
    assert gate.update(0.81) is True


def scheduler_flips(**gate) -> tuple[int, int]:
    """A real Scheduler and no-op worker made slow for real: the only worker is held
    1.1 s, then free 0.3 s, over and over, while 4 sessions submit a final every 50 ms and
    read `degraded` every 10 ms as sessions do. Returns (state changes, partials shed)."""

    async def body() -> tuple[int, int]:
        pool = WorkerPool(WorkerConfig(noop=True, workers=1))
        await pool.start()
        sched = Scheduler(pool, lambda r, text, err: None, degrade_after_s=0.8, **gate)
        sched.start()
        try:
            stop = time.monotonic() + 4.5
            seg = 0

            async def feed() -> None:
                nonlocal seg
                while time.monotonic() < stop:
                    for s in range(4):
                        sched.submit(DecodeRequest(f"s{s}", seg, "final",
                                                   np.ones(1600, np.float32)))
                        sched.submit(DecodeRequest(f"s{s}", seg + 1, "partial",
                                                   np.ones(1600, np.float32)))
                    seg += 1
                    for _ in range(5):
                        _ = sched.degraded
                        await asyncio.sleep(0.01)

            async def stall() -> None:
                while time.monotonic() < stop:
                    held = await pool.acquire()
                    await asyncio.sleep(1.1)
                    await pool.release(held)
                    await asyncio.sleep(0.3)

            await asyncio.gather(feed(), stall())
            return sched.shed.changes, sched.stats.partials_dropped
        finally:
            await sched.stop()
            await pool.stop()

    return asyncio.run(body())


def test_scheduler_under_a_real_stall_flips_once_with_hysteresis():
    plain, _ = scheduler_flips()  # degrade_recover_s = degrade_after_s, no hold: the old rule
    held, shed = scheduler_flips(degrade_recover_s=0.4, degrade_hold_s=2.0)
    assert plain >= 4  # on and off at every stall
    assert held == 1  # on at the first stall, never calm for 2 s after
    assert shed > 0


def test_live_stream_gets_partials_while_speaking_and_none_in_a_long_pause(tmp_path):
    """A real server with a long endpoint (7 s), so a 4 s pause (plus the silence the
    files begin and end with) stays inside one open segment: partials come at the
    configured cadence during speech, none in the pause once the last words are in (the
    old rule sent one every 400 ms of it)."""
    cfg = tmp_path / "server.toml"
    cfg.write_text("partial_interval_ms = 400\n[segmenter]\nendpoint_ms = 7000\n"
                   "post_roll_ms = 200\n")
    speech_a = read_audio(DEV / "sherpa-test-wavs" / "0.wav")  # 6.6 s
    speech_b = read_audio(DEV / "librispeech-test-clean-kw" / "1089-134691-0001.flac")  # 5.4 s
    pause = np.zeros(4 * SR, np.float32)
    audio = np.concatenate([np.zeros(SR // 2, np.float32), speech_a, pause, speech_b,
                            np.zeros(SR, np.float32)])  # < max_segment_s (20 s) in all
    server = start_server("--workers", "1", "--threads", "1", "--config", str(cfg))
    try:
        events: list = []
        t0 = time.monotonic()
        finals, _ = asyncio.run(stream_audio(server.url, audio, realtime=True, events=events))
    finally:
        server.stop()
    partials = [(t - t0, e) for t, e in events if e["type"] == "partial"]
    assert len(finals) == 1 and finals[0].segment == 0  # one segment across the pause
    a_end = 0.5 + len(speech_a) / SR
    b_start = a_end + len(pause) / SR
    during_a = [t for t, _ in partials if 1.0 < t <= a_end]
    in_pause = [t for t, _ in partials if a_end + 1.5 < t <= b_start]
    assert in_pause == []  # nothing new was said: no decode, no message
    gaps = np.diff(during_a)
    assert len(during_a) >= 10 and float(np.median(gaps)) <= 0.5
    assert any(t > b_start for t, _ in partials)
    texts = [e["text"] for _, e in partials]
    assert all(e["start"] == partials[0][1]["start"] for _, e in partials)
    assert "nightfall" in texts[-1].lower() and "longer" in texts[-1].lower()


def test_stable_prefix_is_what_the_last_two_partials_of_a_window_agree_on():
    stable = StablePrefix(agree=2)
    job = PartialJob(segment_id=0, segment_start=0, start=0, end=8000, commit=False)
    assert stable.prefix(job) == ()  # nothing decoded yet
    stable.record(job, (10, 11, 12))
    assert stable.prefix(job) == ()  # one partial agrees with nothing
    stable.record(job, (10, 11, 13, 14))
    assert stable.prefix(job) == (10, 11)
    stable.record(job, None)  # a dropped partial teaches nothing
    stable.record(job, (10, 11, 13, 15))
    assert stable.prefix(job) == (10, 11, 13)  # the last two only
    # a chunk job gets none (its audio may end before the agreed words) and ends the window
    chunk = PartialJob(0, 0, 0, 6000, commit=True)
    assert stable.prefix(chunk) == ()
    stable.record(chunk, (10, 11))
    assert stable.prefix(job) == ()
    # a new window (next chunk, or next segment) starts from nothing
    stable.record(job, (1, 2))
    stable.record(job, (1, 2))
    assert stable.prefix(PartialJob(0, 0, 6000, 9000, commit=False)) == ()
    assert stable.prefix(PartialJob(1, 9000, 9000, 12000, commit=False)) == ()
    stable.record(PartialJob(1, 9000, 9000, 12000, commit=False), (3, 4))
    assert stable.prefix(job) == ()  # the old window is forgotten
    stable.record(job, (1, 2))
    stable.record(job, (1, 2))
    stable.reset()  # a final
    assert stable.prefix(job) == ()


def test_stable_prefix_with_agree_1_is_the_previous_partial_and_3_the_last_three():
    job = PartialJob(segment_id=0, segment_start=0, start=0, end=8000, commit=False)
    one, three = StablePrefix(agree=1), StablePrefix(agree=3)
    for tokens in [(1, 2, 3), (1, 2, 4), (1, 5)]:
        assert three.prefix(job) == ()
        one.record(job, tokens)
        three.record(job, tokens)
        assert one.prefix(job) == tokens
    assert three.prefix(job) == (1,)
    three.record(job, (1, 5, 6))
    assert three.prefix(job) == (1,)  # (1, 2, 4), (1, 5), (1, 5, 6)
    three.record(job, (1, 5, 7))
    assert three.prefix(job) == (1, 5)
    with pytest.raises(ValueError):
        StablePrefix(agree=0)


def test_common_prefix():
    assert common_prefix((1, 2, 3), (1, 2, 4, 5)) == (1, 2)
    assert common_prefix((1, 2), (1, 2, 3)) == (1, 2)
    assert common_prefix((), (1,)) == ()
    assert common_prefix((5,), (6,)) == ()
