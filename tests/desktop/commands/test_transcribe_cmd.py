"""`earshot transcribe` as a user runs it: a real process, real model, real files."""

from __future__ import annotations

import itertools
import json
import resource
import subprocess
import sys
import wave

import numpy as np
import pytest
import soundfile as sf
import srt

from edge_server.evaluation import word_error_rate
from tests.conftest import DEV, LONGFORM, SENTENCE_SETS, dev_rows


def earshot(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "desktop.cli", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_dev_sentences_wer_within_target():
    rows = dev_rows(SENTENCE_SETS)
    out = earshot("transcribe", "--format", "json", *[str(DEV / r["path"]) for r in rows])
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert [d["file"] for d in data] == [str(DEV / r["path"]) for r in rows]
    score = word_error_rate([r["transcript"] for r in rows], [d["text"] for d in data])
    assert score.wer <= 0.035, score
    for d in data:
        (seg,) = d["segments"]
        assert seg["start"] == 0.0 and seg["end"] > 1.0 and seg["text"] == d["text"]


def test_long_file_is_split_into_timed_segments():
    out = earshot("transcribe", "--format", "json", str(LONGFORM / "two_cities.wav"))
    assert out.returncode == 0, out.stderr
    (doc,) = json.loads(out.stdout)
    segs = doc["segments"]
    assert len(segs) >= 3
    assert all(0 <= s["start"] < s["end"] <= 44.5 for s in segs)
    assert all(a["end"] <= b["start"] for a, b in itertools.pairwise(segs))
    assert "best of times" in doc["text"] and "worst of times" in doc["text"]


def test_srt_files_per_input_into_a_folder(tmp_path):
    files = [DEV / "sherpa-test-wavs/0.wav", LONGFORM / "two_cities.wav"]
    out = earshot("transcribe", "--format", "srt", "-o", str(tmp_path / "subs"), *map(str, files))
    assert out.returncode == 0, out.stderr
    subs = list(srt.parse((tmp_path / "subs" / "two_cities.srt").read_text()))
    assert len(subs) >= 3 and subs[0].start.total_seconds() > 0
    assert "lamps" in (tmp_path / "subs" / "0.srt").read_text()


def test_8k_and_stereo_48k_input_give_the_same_words(tmp_path):
    audio, rate = sf.read(DEV / "sherpa-test-wavs/0.wav", dtype="float32")
    stereo = tmp_path / "stereo48k.flac"
    import soxr

    up = soxr.resample(audio, rate, 48000)
    sf.write(stereo, np.stack([up, up], axis=1), 48000)
    out = earshot("transcribe", str(stereo), str(DEV / "sherpa-test-wavs/8k.wav"))
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.splitlines()
    assert "yellow lamps" in first.lower() and "apprehension" in second.lower()


def _zero_length_wav(path):
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)


def _nan_wav(path):
    data = np.zeros(16000, np.float32)
    data[5] = np.nan
    sf.write(path, data, 16000, subtype="FLOAT")


@pytest.mark.parametrize(
    ("make", "expect_rc", "expect"),
    [
        (None, 1, "no such file"),
        (lambda p: p.write_text("this is not audio"), 1, "not a readable audio file"),
        (lambda p: p.write_bytes(b""), 1, "file is empty"),
        (_nan_wav, 1, "NaN"),
        (_zero_length_wav, 0, ""),
    ],
    ids=["missing", "not-audio", "empty", "nan", "zero-length"],
)
def test_bad_input_gives_one_clear_line(tmp_path, make, expect_rc, expect):
    path = tmp_path / "input.wav"
    if make:
        make(path)
    out = earshot("transcribe", str(path))
    assert out.returncode == expect_rc
    assert "Traceback" not in out.stderr
    if expect:
        (line,) = out.stderr.strip().splitlines()
        assert line.startswith("earshot: error:") and expect in line and str(path) in line
    else:
        assert out.stdout.strip() == "" and out.stderr == ""


def test_one_bad_file_does_not_stop_the_others(tmp_path):
    out = earshot("transcribe", str(tmp_path / "missing.wav"), str(DEV / "sherpa-test-wavs/8k.wav"))
    assert out.returncode == 1
    assert "apprehension" in out.stdout.lower()
    assert out.stderr.count("earshot: error:") == 1


def test_silence_gives_no_text(tmp_path):
    path = tmp_path / "silence.wav"
    sf.write(path, np.zeros(16000 * 5, np.float32), 16000)
    out = earshot("transcribe", "--format", "json", str(path))
    assert out.returncode == 0
    assert json.loads(out.stdout) == [{"file": str(path), "text": "", "segments": []}]


@pytest.mark.slow
def test_two_hour_file_in_bounded_memory(tmp_path):
    """2 h of 16 kHz audio (a sparse file of digital silence plus one utterance at the end)."""
    path = tmp_path / "two_hours.wav"
    speech, _ = sf.read(DEV / "sherpa-test-wavs/0.wav", dtype="int16")
    frames = 2 * 3600 * 16000
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"")
    with path.open("r+b") as fh:  # grow the data chunk sparsely, then append real speech
        fh.seek(44 + (frames - len(speech)) * 2)
        fh.write(speech.tobytes())
        fh.seek(4)
        fh.write((36 + frames * 2).to_bytes(4, "little"))
        fh.seek(40)
        fh.write((frames * 2).to_bytes(4, "little"))
    out = earshot("transcribe", "--format", "json", str(path))
    assert out.returncode == 0, out.stderr
    (doc,) = json.loads(out.stdout)
    assert "lamps" in doc["text"].lower()
    assert doc["segments"][-1]["end"] == pytest.approx(7200, abs=1.0)
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    assert peak_mb < 700, f"peak RSS {peak_mb:.0f} MB"  # the decoded file alone is 460 MB
