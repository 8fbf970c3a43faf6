import numpy as np
import pytest

from edge_server.segmenter import Segmenter, SegmenterConfig
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
