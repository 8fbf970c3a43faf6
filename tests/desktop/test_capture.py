"""Capture sources: real files through FileSource, and MicrophoneSource on this machine
(which has no sound card). The one fake is `sounddevice.InputStream`, standing in for a
48 kHz stereo microphone, to exercise the conversion path without hardware."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf

from desktop.capture import (
    CaptureError,
    FileSource,
    InputDevice,
    MicrophoneSource,
    level_dbfs,
    list_input_devices,
)
from edge_server.audio import SAMPLE_RATE, read_audio
from tests.conftest import DEV

try:
    import sounddevice as sd
except OSError:  # no PortAudio library: the microphone tests cannot run
    sd = None
needs_portaudio = pytest.mark.skipif(sd is None, reason="PortAudio is not installed")

WAV_16K = DEV / "sherpa-test-wavs" / "0.wav"
WAV_8K = DEV / "sherpa-test-wavs" / "8k.wav"


class Recorder:
    """Collects what a source delivers, and on which threads."""

    def __init__(self) -> None:
        self.chunks: list[np.ndarray] = []
        self.threads: set[int] = set()
        self.ends = 0
        self.ended = threading.Event()

    def on_audio(self, chunk: np.ndarray) -> None:
        self.threads.add(threading.get_ident())
        self.chunks.append(chunk)

    def on_end(self) -> None:
        self.threads.add(threading.get_ident())
        self.ends += 1
        self.ended.set()

    def audio(self) -> np.ndarray:
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.float32)


def run_to_end(source, timeout: float = 30.0) -> Recorder:
    rec = Recorder()
    source.start(rec.on_audio, rec.on_end)
    assert rec.ended.wait(timeout), "source never ended"
    source.stop()
    return rec


def test_file_source_fast_delivers_every_sample_in_order_on_a_worker_thread():
    source = FileSource(WAV_16K, realtime=False, chunk_ms=100)
    rec = run_to_end(source)
    expected = read_audio(WAV_16K)
    got = rec.audio()
    assert got.dtype == np.float32 and got.ndim == 1
    np.testing.assert_array_equal(got, expected)
    assert all(len(c) == 1600 for c in rec.chunks[:-1])
    assert 0 < len(rec.chunks[-1]) <= 1600
    assert rec.ends == 1
    assert threading.get_ident() not in rec.threads
    assert not source.running and source.error is None and source.overruns == 0
    source.stop()  # idempotent
    assert rec.ends == 1


def test_file_source_8k_comes_out_at_16k():
    rec = run_to_end(FileSource(WAV_8K, realtime=False))
    expected_len = sf.info(str(WAV_8K)).frames * 2
    assert abs(len(rec.audio()) - expected_len) <= 2
    np.testing.assert_array_equal(rec.audio(), read_audio(WAV_8K))


def test_file_source_realtime_paces_to_wall_clock(tmp_path):
    clip = tmp_path / "two_seconds.wav"
    sf.write(str(clip), read_audio(WAV_16K)[: 2 * SAMPLE_RATE], SAMPLE_RATE)
    rec = Recorder()
    source = FileSource(clip, realtime=True, chunk_ms=100)
    t0 = time.monotonic()
    source.start(rec.on_audio, rec.on_end)
    assert rec.ended.wait(10)
    elapsed = time.monotonic() - t0
    source.stop()
    assert 1.6 <= elapsed <= 3.0, elapsed
    assert len(rec.audio()) == 2 * SAMPLE_RATE and rec.ends == 1


def test_file_source_stop_mid_file_is_prompt_and_ends_once():
    rec = Recorder()
    source = FileSource(WAV_16K, realtime=True, chunk_ms=100)  # 6.6 s of speech
    source.start(rec.on_audio, rec.on_end)
    time.sleep(0.45)
    assert source.running
    t0 = time.monotonic()
    source.stop()
    assert time.monotonic() - t0 < 0.5
    assert not source.running
    assert rec.ends == 1
    got = rec.audio()
    assert 0 < len(got) < 1.5 * SAMPLE_RATE  # stopped well before the end of the file
    np.testing.assert_array_equal(got, read_audio(WAV_16K)[: len(got)])


def test_file_source_can_restart_after_stop():
    source = FileSource(WAV_8K, realtime=False)
    first = run_to_end(source)
    second = run_to_end(source)
    np.testing.assert_array_equal(first.audio(), second.audio())


@pytest.mark.parametrize("kind", ["missing", "not_audio", "empty", "folder"])
def test_file_source_bad_file_raises_at_start(tmp_path, kind):
    path = tmp_path / "x.wav"
    if kind == "not_audio":
        path.write_text("this is not a wav file\n" * 10)
    elif kind == "empty":
        path.touch()
    elif kind == "folder":
        path.mkdir()
    source = FileSource(path)
    rec = Recorder()
    with pytest.raises(CaptureError) as err:
        source.start(rec.on_audio, rec.on_end)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    assert not source.running and rec.ends == 0
    source.stop()  # harmless when never started


@needs_portaudio
def test_list_input_devices_on_this_machine_returns_a_list():
    devices = list_input_devices()
    assert isinstance(devices, list)
    assert all(isinstance(d, InputDevice) and d.channels > 0 for d in devices)


@needs_portaudio
def test_microphone_start_without_a_device_raises_one_line_capture_error():
    if list_input_devices():
        pytest.skip("this machine has a microphone")
    source = MicrophoneSource()
    rec = Recorder()
    with pytest.raises(CaptureError) as err:
        source.start(rec.on_audio, rec.on_end)
    assert str(err.value) == "no microphone found"
    assert not source.running and rec.ends == 0
    with pytest.raises(CaptureError, match="no microphone found"):
        MicrophoneSource("USB headset").start(rec.on_audio)


def test_level_dbfs():
    assert level_dbfs(np.zeros(1600, np.float32)) == -100.0
    assert level_dbfs(np.zeros(0, np.float32)) == -100.0
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    sine = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    assert level_dbfs(sine) == pytest.approx(-3.01, abs=0.05)
    assert level_dbfs(0.1 * sine) == pytest.approx(-23.01, abs=0.05)
    assert level_dbfs(np.full(10, 1e-9, np.float32)) == -100.0


class FakeInputStream:
    """A 48 kHz stereo microphone: from its own thread, calls the stream callback with
    10 ms float32 blocks of a 440 Hz tone on the left channel and silence on the right."""

    RATE = 48_000
    BLOCK = 480
    BLOCKS = 150  # 1.5 s
    OVERFLOW_AT = 40
    instances: list[FakeInputStream] = []  # noqa: RUF012 - test bookkeeping

    def __init__(self, *, device=None, samplerate=None, channels=None, dtype=None,
                 blocksize=None, callback=None, finished_callback=None, **_):
        assert samplerate is None and channels is None  # "the device's defaults"
        assert dtype == "float32"
        self.samplerate = float(self.RATE)
        self.channels = 2
        self.device = 7
        self.callback = callback
        self.finished_callback = finished_callback
        self.delivered = threading.Event()
        self._thread: threading.Thread | None = None
        self.closed = False
        FakeInputStream.instances.append(self)

    def _run(self) -> None:
        for i in range(self.BLOCKS):
            n = np.arange(i * self.BLOCK, (i + 1) * self.BLOCK)
            block = np.zeros((self.BLOCK, 2), np.float32)
            block[:, 0] = 0.8 * np.sin(2 * np.pi * 440 * n / self.RATE)
            status = sd.CallbackFlags()
            status.input_overflow = i == self.OVERFLOW_AT
            self.callback(block, self.BLOCK, None, status)
        self.delivered.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._thread.join()
        if self.finished_callback is not None:
            self.finished_callback()

    def close(self) -> None:
        self.closed = True


@needs_portaudio
def test_microphone_conversion_path_with_a_fake_48k_stereo_stream(monkeypatch):
    monkeypatch.setattr(sd, "InputStream", FakeInputStream)
    FakeInputStream.instances.clear()
    source = MicrophoneSource(block_ms=100)
    rec = Recorder()
    source.start(rec.on_audio, rec.on_end)
    fake = FakeInputStream.instances[-1]
    assert fake.delivered.wait(10)
    time.sleep(0.2)  # let the worker drain the queue
    assert source.running and rec.ends == 0
    source.stop()
    assert fake.closed and not source.running and rec.ends == 1
    assert threading.get_ident() not in rec.threads
    assert source.source_rate == 48_000 and source.source_channels == 2

    got = rec.audio()
    assert got.dtype == np.float32 and got.ndim == 1
    # 48 kHz -> 16 kHz, plus one block of silence for the overflow (the host gave no times)
    expected_len = (FakeInputStream.BLOCKS + 1) * FakeInputStream.BLOCK // 3
    assert abs(len(got) - expected_len) <= 2
    assert all(len(c) == 1600 for c in rec.chunks[:-1])
    # Mono is the channel mean (0.4 amplitude) and the tone is still at 440 Hz.
    body = got[1600:-1600]
    assert np.sqrt(np.mean(body**2)) == pytest.approx(0.4 / np.sqrt(2), rel=0.02)
    spectrum = np.abs(np.fft.rfft(body * np.hanning(len(body))))
    peak_hz = np.argmax(spectrum) * SAMPLE_RATE / len(body)
    assert abs(peak_hz - 440) < 5
    assert source.overruns == 1  # the one block flagged input_overflow
    assert source.lost_samples == FakeInputStream.BLOCK // 3 and source.lost_ms == 10.0


@needs_portaudio
def test_microphone_full_queue_drops_are_counted(monkeypatch):
    monkeypatch.setattr(sd, "InputStream", FakeInputStream)
    monkeypatch.setattr("desktop.capture.MAX_QUEUED_BLOCKS", 10)
    FakeInputStream.instances.clear()
    release = threading.Event()
    source = MicrophoneSource(block_ms=10)
    rec = Recorder()

    def slow_consumer(chunk: np.ndarray) -> None:
        release.wait(5)  # the worker is stuck: the PortAudio side must not block
        rec.on_audio(chunk)

    source.start(slow_consumer, rec.on_end)
    fake = FakeInputStream.instances[-1]
    assert fake.delivered.wait(5), "the audio callback blocked"
    release.set()
    source.stop()
    # 150 blocks into a 10-block queue with a stuck consumer: most are dropped, and counted.
    assert source.overruns > 100
    assert rec.ends == 1
    # ... and each dropped block came out as silence of its length: the stream is as long
    # as the microphone's 1.5 s (plus the flagged block's 10 ms), so later times stay true.
    produced = (FakeInputStream.BLOCKS + 1) * FakeInputStream.BLOCK // 3
    assert abs(len(rec.audio()) - produced) <= 2
    lost_blocks = source.overruns - 1  # the flagged one, if it got through, is 1 block too
    assert source.lost_samples >= lost_blocks * FakeInputStream.BLOCK // 3
    assert source.lost_ms >= 1000


class GappyInputStream(FakeInputStream):
    """The fake microphone with host timestamps, whose tone fades in over the 1.5 s (so a
    shift in time changes the level), and which loses blocks SKIP (PortAudio drops them:
    the callback never sees them) and flags the next block `input_overflow`."""

    SKIP = range(60, 80)  # 200 ms lost
    ADC_START = 1000.0
    skip = True

    def _run(self) -> None:
        for i in range(self.BLOCKS):
            if self.skip and i in self.SKIP:
                continue
            n = np.arange(i * self.BLOCK, (i + 1) * self.BLOCK)
            block = np.zeros((self.BLOCK, 2), np.float32)
            block[:, 0] = (0.1 + 0.8 * n / (self.BLOCKS * self.BLOCK)) * np.sin(
                2 * np.pi * 440 * n / self.RATE)
            status = sd.CallbackFlags()
            status.input_overflow = self.skip and i == self.SKIP.stop
            when = SimpleNamespace(inputBufferAdcTime=self.ADC_START + i * self.BLOCK / self.RATE)
            self.callback(block, self.BLOCK, when, status)
        self.delivered.set()


def capture_fake(monkeypatch, stream_class) -> tuple[MicrophoneSource, Recorder]:
    monkeypatch.setattr(sd, "InputStream", stream_class)
    FakeInputStream.instances.clear()
    source = MicrophoneSource(block_ms=100)
    rec = Recorder()
    source.start(rec.on_audio, rec.on_end)
    assert FakeInputStream.instances[-1].delivered.wait(10)
    time.sleep(0.2)
    source.stop()
    return source, rec


@needs_portaudio
def test_audio_lost_by_the_host_becomes_silence_of_its_length(monkeypatch):
    monkeypatch.setattr(GappyInputStream, "skip", False)
    _, clean = capture_fake(monkeypatch, GappyInputStream)
    monkeypatch.setattr(GappyInputStream, "skip", True)
    source, lossy = capture_fake(monkeypatch, GappyInputStream)
    a, b = clean.audio(), lossy.audio()
    assert abs(len(a) - len(b)) <= 2  # 200 ms lost, 200 ms of silence put in its place
    assert source.overruns == 1 and source.lost_ms == pytest.approx(200, abs=1)
    gap = slice(60 * 160 + 100, 80 * 160 - 100)  # blocks 60-79 at 16 kHz, minus the edges
    assert np.abs(b[gap]).max() < 1e-3 < np.abs(a[gap]).max()
    # After the gap the sound is where it was in time: the fading-in tone matches the
    # clean capture sample for sample (a 200 ms shift would change its level by 10%).
    after = slice(90 * 160, len(a) - 1600)
    np.testing.assert_allclose(b[after], a[after], atol=2e-3)
    before = slice(1600, 55 * 160)
    np.testing.assert_allclose(b[before], a[before], atol=1e-6)
