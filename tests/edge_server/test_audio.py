import numpy as np
import pytest
import soundfile as sf

from edge_server.audio import (
    AudioError,
    audio_duration,
    float_to_pcm16,
    pcm16_to_float,
    read_audio,
    read_audio_blocks,
    resample,
)


def tone(seconds: float, rate: int, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_8k_is_resampled_to_16k(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, tone(2.0, 8000), 8000)
    audio = read_audio(path)
    assert abs(len(audio) - 32000) <= 16
    assert audio.dtype == np.float32


def test_stereo_48k_flac_becomes_mono_16k(tmp_path):
    path = tmp_path / "a.flac"
    left = tone(1.0, 48000)
    sf.write(path, np.stack([left, left], axis=1), 48000)
    audio = read_audio(path)
    assert abs(len(audio) - 16000) <= 16
    assert 0.4 < np.abs(audio).max() < 0.6


def test_blocks_equal_whole(tmp_path):
    path = tmp_path / "a.ogg"
    sf.write(path, tone(3.0, 22050), 22050, format="OGG")
    whole = np.concatenate(list(read_audio_blocks(path, block_seconds=0.37)))
    assert abs(len(whole) - 48000) <= 32


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "no such file"),
        (lambda p: p.write_bytes(b""), "file is empty"),
        (lambda p: p.write_text("hello, I am text"), "not a readable audio file"),
        (lambda p: p.mkdir(), "is a folder"),
    ],
)
def test_bad_files_give_one_line_errors(tmp_path, make, message):
    path = tmp_path / "x.wav"
    make(path)
    with pytest.raises(AudioError, match=message) as err:
        read_audio(path)
    assert "\n" not in str(err.value)


def test_nan_samples_are_refused(tmp_path):
    path = tmp_path / "nan.wav"
    data = tone(1.0, 16000)
    data[100] = np.nan
    sf.write(path, data, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN"):
        read_audio(path)


def test_zero_length_wav_reads_as_empty(tmp_path):
    path = tmp_path / "zero.wav"
    sf.write(path, np.zeros(0, np.float32), 16000)
    assert len(read_audio(path)) == 0
    assert audio_duration(path) == 0.0


def test_unsupported_rate():
    with pytest.raises(AudioError, match="unsupported sample rate 1000"):
        resample(np.zeros(10, np.float32), 1000)


def test_pcm16_round_trip():
    x = np.array([0.0, 0.5, -0.5, 0.999, -1.0], np.float32)
    y = pcm16_to_float(float_to_pcm16(x))
    assert np.abs(x - y).max() < 1e-4
    with pytest.raises(AudioError, match="odd number of bytes"):
        pcm16_to_float(b"\x00\x01\x02")


@pytest.mark.parametrize("suffix", [".m4a", ".webm"])
def test_compressed_containers_decode_through_ffmpeg(tmp_path, suffix):
    from tests.audio_encode import encode

    source = tone(3.0, 16_000, freq=300.0)
    path = encode(source, 16_000, tmp_path / f"a{suffix}")
    assert abs(audio_duration(path) - 3.0) < 0.1
    blocks = list(read_audio_blocks(path, block_seconds=1.0))
    assert len(blocks) >= 3 and all(b.dtype == np.float32 for b in blocks)
    audio = np.concatenate(blocks)
    assert abs(len(audio) / 16_000 - 3.0) < 0.1
    rms = float(np.sqrt(np.mean(audio[4000:-4000] ** 2)))
    assert abs(rms - 0.5 / np.sqrt(2)) < 0.05  # the tone survived the lossy codec


def test_truncated_container_is_a_clean_error(tmp_path):
    from tests.audio_encode import encode

    path = encode(tone(3.0, 16_000), 16_000, tmp_path / "a.m4a")
    data = path.read_bytes()
    broken = tmp_path / "broken.m4a"
    broken.write_bytes(data[: len(data) // 3])  # the moov atom at the end is gone
    with pytest.raises(AudioError, match=r"broken\.m4a"):
        list(read_audio_blocks(broken))
