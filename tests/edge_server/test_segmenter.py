import itertools

import numpy as np
import pytest

from edge_server.segmenter import AudioBuffer, Segmenter, SegmenterConfig
from edge_server.vad import WINDOW
from tests.babble import babble
from tests.conftest import DEV, speech_with_pauses

UTTERANCES = [DEV / "sherpa-test-wavs/0.wav", DEV / "pocketsphinx-testdata/001.wav",
              DEV / "librispeech-test-clean-kw/1089-134686-0001.flac"]


def run(vad, audio, config=None, chunk=1600):
    seg = Segmenter(vad.stream(), config)
    out = []
    for i in range(0, len(audio), chunk):
        out += seg.feed(audio[i : i + chunk])
    return out + seg.flush()


def utterance_spans(pause_s=1.0, lead_s=0.5):
    from edge_server.audio import read_audio

    spans, pos = [], int(lead_s * 16000)
    for p in UTTERANCES:
        n = len(read_audio(p))
        spans.append((pos, pos + n))
        pos += n + int(pause_s * 16000)
    return spans


def test_one_segment_per_utterance_covering_its_speech(vad):
    audio = speech_with_pauses(UTTERANCES, pause_s=1.0)
    segments = run(vad, audio)
    assert len(segments) == len(UTTERANCES)
    for s, (a, b) in zip(segments, utterance_spans(), strict=True):
        assert a - 16000 // 2 <= s.start and s.end <= b + 16000
        assert np.array_equal(s.audio, audio[s.start : s.end])
    assert [s.id for s in segments] == [0, 1, 2]


def test_pre_roll_keeps_audio_before_the_first_speech_window(vad):
    lead = np.zeros(16000, np.float32)
    audio = np.concatenate([lead, speech_with_pauses(UTTERANCES[:1], lead_s=0)])
    (segment,) = run(vad, audio)
    first_loud = int(np.argmax(np.abs(audio) > 0.02))
    assert segment.start <= first_loud - int(0.2 * 16000)


def test_silence_and_noise_give_no_segment(vad):
    rng = np.random.default_rng(0)
    assert run(vad, np.zeros(10 * 16000, np.float32)) == []
    noise = (0.01 * rng.standard_normal(10 * 16000)).astype(np.float32)
    assert run(vad, noise) == []


def test_long_speech_is_cut_below_the_maximum_and_loses_nothing(vad):
    audio = speech_with_pauses([DEV / "sherpa-test-wavs/1.wav"] * 2, pause_s=0.2)
    config = SegmenterConfig(max_segment_s=4.0)
    segments = run(vad, audio, config)
    assert len(segments) >= 8
    assert all(s.end - s.start <= 4.0 * 16000 + 512 for s in segments)
    joined = [s for s in segments if s.start == segments[0].end]
    assert joined, "a max-length cut continues exactly where the previous segment ended"


def test_longer_endpoint_merges_across_short_pauses(vad):
    audio = speech_with_pauses(UTTERANCES, pause_s=1.0)
    assert len(run(vad, audio, SegmenterConfig(endpoint_ms=1500, post_roll_ms=200))) == 1


@pytest.mark.parametrize("chunk", [160, 512, 4000, 48000])
def test_chunking_does_not_change_segments(vad, chunk):
    audio = speech_with_pauses(UTTERANCES, pause_s=1.0)
    ref = [(s.start, s.end) for s in run(vad, audio, chunk=1600)]
    assert [(s.start, s.end) for s in run(vad, audio, chunk=chunk)] == ref


def test_open_segment_is_visible_for_partials(vad):
    audio = speech_with_pauses(UTTERANCES[:1], lead_s=0.5)
    seg = Segmenter(vad.stream())
    seg.feed(audio[: 16000 * 2])
    opened = seg.open_segment()
    assert opened is not None and opened[0] == 0 and len(opened[2]) > 16000


def test_config_validation():
    with pytest.raises(ValueError):
        SegmenterConfig(threshold=0.3, release_threshold=0.5)
    with pytest.raises(ValueError):
        SegmenterConfig(max_segment_s=1)


ENDLESS_S = 600  # 10 min (18750 VAD windows, ~2 s); bench/soak.py runs 30 min on a server


@pytest.fixture(scope="module")
def endless(vad):
    """10 min of babble through one segmenter in 100 ms chunks, recording what it held."""
    audio = babble(ENDLESS_S)
    seg = Segmenter(vad.stream())
    segments, held, partials = [], [], []
    for k, i in enumerate(range(0, len(audio), 1600)):
        segments += seg.feed(audio[i : i + 1600])
        held.append((seg.held_samples, len(seg.buffer.chunks)))
        if k % 10 == 0 and (opened := seg.open_segment()) is not None:
            _, start, part = opened
            same = np.array_equal(part, audio[start : start + len(part)])
            partials.append((start, len(part), same))
    segments += seg.flush()
    return audio, seg, segments, held, partials


def test_endless_speech_holds_at_most_one_segment_plus_pre_roll(endless):
    _, seg, _, held, _ = endless
    c = seg.config
    bound = int(c.max_segment_s * 16000) + c.pre_roll_ms * 16 + 2 * WINDOW
    assert max(h for h, _ in held) <= bound, "held samples grow with the stream"
    # chunks walked by a partial: those held, never the stream's
    assert max(n for _, n in held) <= bound // 1600 + 2
    assert seg.held_samples <= c.pre_roll_ms * 16 + 2 * WINDOW  # after flush: idle


def test_endless_speech_is_cut_every_max_segment_and_loses_nothing(endless):
    audio, seg, segments, _, _ = endless
    max_len = int(seg.config.max_segment_s * 16000)
    assert len(segments) >= ENDLESS_S / seg.config.max_segment_s
    assert segments[0].start == 0 and segments[-1].end == len(audio)
    assert [s.id for s in segments] == list(range(len(segments)))
    for a, b in itertools.pairwise(segments):
        assert b.start == a.end, "a cut continues exactly where the previous segment ended"
    for s in segments:
        # cut at the quietest window of the second half: between half and all of the maximum
        assert max_len // 2 <= s.end - s.start <= max_len or s is segments[-1]
        assert np.array_equal(s.audio, audio[s.start : s.end])


def test_partial_audio_is_the_open_segment_only(endless):
    audio, seg, segments, _, partials = endless
    max_len = int(seg.config.max_segment_s * 16000)
    assert len(partials) >= 0.9 * len(audio) / 16000  # speech was open nearly all the time
    assert all(ok for _, _, ok in partials), "partial audio differs from the stream"
    assert max(n for _, n, _ in partials) <= max_len + WINDOW
    starts = {s.start for s in segments}
    assert {start for start, _, _ in partials} <= starts


def test_audio_buffer_releases_the_head_of_a_long_chunk():
    buf = AudioBuffer()
    block = np.arange(10 * 16000, dtype=np.float32)
    buf.append(block)
    buf.drop_before(9 * 16000)
    assert buf.held == 16000 and buf.chunks[0].base is None  # a copy: the block can go
    assert np.array_equal(buf.slice(0, 10 * 16000), block[9 * 16000 :])
    buf.drop_before(9 * 16000 + 100)  # less than TRIM_MIN: no copy made
    assert buf.held == 16000
    buf.drop_before(20 * 16000)  # clamped to what is held
    assert buf.held == 0 and buf.start == buf.end == 10 * 16000
