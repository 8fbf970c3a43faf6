"""loadtest.speech: real dev utterances joined with pauses; the expected segments."""

import numpy as np
import pytest

from loadtest import speech


def test_speech_bounds_find_the_tone_inside_silence():
    rng = np.random.default_rng(0)
    audio = (rng.standard_normal(3 * 16000) * 1e-4).astype(np.float32)  # room tone
    t = np.arange(16000) / 16000
    audio[16000:32000] += 0.3 * np.sin(2 * np.pi * 220 * t).astype(np.float32)
    start, end = speech.speech_bounds(audio)
    assert start == pytest.approx(1.0, abs=0.02)
    assert end == pytest.approx(2.0, abs=0.02)


def test_scripts_hold_the_dev_sentences_in_a_different_order_per_stream():
    clips = speech.load_clips()
    assert len(clips) == 18 and all(c.text for c in clips)
    a, b = speech.build_scripts(clips, 2, 20.0)
    assert a.seconds >= 20.0 + speech.TAIL_S
    assert [e.text for e in a.segments] != [e.text for e in b.segments]
    for script in (a, b):
        ends = [e.end for e in script.segments]
        assert ends == sorted(ends) and ends[-1] <= script.seconds - speech.TAIL_S
        for prev, nxt in zip(script.segments, script.segments[1:], strict=False):
            assert nxt.start - prev.end >= speech.PAUSE_S[0]  # separable by the endpoint
        # the audio really holds speech where a segment is expected
        seg = script.segments[0]
        inside = script.audio[int(seg.start * 16000):int(seg.end * 16000)]
        assert np.sqrt(np.mean(inside ** 2)) > 0.01


def test_audio_files_without_transcripts_and_bad_paths(tmp_path):
    clips = speech.load_clips()
    path = clips[0].name
    (only,) = speech.load_clips([path])
    assert only.text is None
    with pytest.raises(speech.SpeechError, match="no such file"):
        speech.load_clips([tmp_path / "missing.wav"])
