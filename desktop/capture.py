"""Audio capture: one interface for a microphone and for a file fed as if it were one.

Contract of every `AudioSource`:
- `start(on_audio, on_end)` opens the source (raising `CaptureError`, with a one-line message
  fit to show a user, when it cannot) and spawns the source's own worker thread;
- `on_audio(chunk)` receives 16 kHz mono float32 chunks, in order, without gaps: audio the
  sound system lost (an input overflow, a block dropped because the worker fell behind) is
  delivered as silence of the same length, so sample positions stay true to wall-clock
  time. `overruns` counts such losses and `lost_samples` the silence put in their place
  (16 kHz samples; `lost_ms` in milliseconds); both may be read from any thread while
  capturing;
- `on_end()` is called exactly once per `start()`: when a finite source is exhausted, when
  the source fails (then `error` says why), or after `stop()`;
- `stop()` is idempotent and returns once the worker thread has exited (joined with a
  timeout, so a callback that hangs cannot hang the caller forever).

Thread rules: `on_audio` and `on_end` run on the source's worker thread, never on the thread
that called `start()`; a UI must hand the data over to its own thread (e.g. a Qt queued
signal). `start()`/`stop()` are meant for one controlling thread; `stop()` may also be
called from inside a callback (it then does not wait for itself). For a microphone, the
PortAudio callback only copies each block into a bounded queue and never blocks; mixing
down, resampling and the callbacks all happen on the worker thread.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import soxr

from edge_server.audio import (
    SAMPLE_RATE,
    AudioError,
    audio_duration,
    check_rate,
    read_audio_blocks,
    to_mono,
)

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 2.0
SILENCE_DBFS = -100.0
# Blocks the PortAudio callback may queue ahead of the worker: seconds of audio at the
# usual host block sizes (256-2048 frames). Beyond that, blocks are dropped, counted, and
# replaced by silence of their length.
MAX_QUEUED_BLOCKS = 500
# Longest silence put in for one input overflow: a longer gap in the host's timestamps is
# taken as a clock jump rather than lost audio.
MAX_GAP_S = 10.0
_POLL_S = 0.05

AudioCallback = Callable[[np.ndarray], None]
EndCallback = Callable[[], None]


class CaptureError(RuntimeError):
    """Capture cannot start or go on. The message is one line, fit to show a user."""


@dataclass(frozen=True)
class InputDevice:
    """One audio input device as PortAudio reports it."""

    index: int
    name: str
    channels: int
    default_rate: float
    is_default: bool


def _sounddevice() -> ModuleType:
    """Import sounddevice lazily: it loads PortAudio, which a server or CI box may lack
    (sounddevice raises OSError when the library is missing)."""
    try:
        import sounddevice
    except ImportError:
        raise CaptureError(
            "sounddevice is not installed (install the desktop extra: pip install '.[desktop]')"
        ) from None
    except OSError:
        raise CaptureError(
            "PortAudio is not installed (Debian/Ubuntu: sudo apt-get install libportaudio2)"
        ) from None
    return sounddevice


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def list_input_devices() -> list[InputDevice]:
    """Every device with at least one input channel ([] when there is none)."""
    sd = _sounddevice()
    try:
        devices = sd.query_devices()
    except sd.PortAudioError as exc:
        raise CaptureError(f"cannot list audio devices: {_one_line(exc)}") from None
    try:
        default_index = int(sd.query_devices(kind="input")["index"])
    except (sd.PortAudioError, ValueError, KeyError, TypeError):
        default_index = -1
    return [
        InputDevice(
            index=int(d["index"]),
            name=str(d["name"]),
            channels=int(d["max_input_channels"]),
            default_rate=float(d["default_samplerate"]),
            is_default=int(d["index"]) == default_index,
        )
        for d in devices
        if d["max_input_channels"] > 0
    ]


def level_dbfs(chunk: np.ndarray) -> float:
    """RMS level of `chunk` in dBFS (a full-scale sine is about -3); silence is -100."""
    if chunk.size == 0:
        return SILENCE_DBFS
    rms = math.sqrt(float(np.mean(np.square(chunk, dtype=np.float64))))
    if rms <= 0.0:
        return SILENCE_DBFS
    return max(SILENCE_DBFS, 20.0 * math.log10(rms))


class Chunker:
    """Cuts a stream of arrays into fixed-size chunks (the last one may be shorter)."""

    def __init__(self, size: int) -> None:
        if size <= 0:
            raise ValueError("chunk size must be positive")
        self.size = size
        self._parts: list[np.ndarray] = []
        self._pending = 0

    def push(self, samples: np.ndarray) -> Iterator[np.ndarray]:
        """Add `samples`; yield every chunk that is now complete."""
        if len(samples):
            self._parts.append(samples)
            self._pending += len(samples)
        while self._pending >= self.size:
            joined = np.concatenate(self._parts) if len(self._parts) > 1 else self._parts[0]
            yield joined[: self.size]
            rest = joined[self.size :]
            self._parts = [rest] if len(rest) else []
            self._pending = len(rest)

    def flush(self) -> np.ndarray | None:
        """The incomplete remainder, if any."""
        if not self._pending:
            return None
        rest = np.concatenate(self._parts)
        self._parts, self._pending = [], 0
        return rest


class AudioSource(ABC):
    """Base of every capture source; see the module docstring for the contract."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.overruns = 0  # losses by the sound system since start()
        self.lost_samples = 0  # 16 kHz samples of silence delivered in their place
        self.error: str | None = None
        self._thread: threading.Thread | None = None
        self._stop_event = threading.Event()
        self._control = threading.Lock()

    @property
    def running(self) -> bool:
        """True from `start()` until the worker thread has exited."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def start(self, on_audio: AudioCallback, on_end: EndCallback | None = None) -> None:
        """Open the source and start delivering audio (CaptureError if it cannot)."""
        with self._control:
            if self.running:
                raise CaptureError(f"{self.name} is already capturing")
            self._stop_event.clear()
            self.overruns = 0
            self.lost_samples = 0
            self.error = None
            self._open()
            self._thread = threading.Thread(
                target=self._work, args=(on_audio, on_end), name=f"capture:{self.name}",
                daemon=True,
            )
            self._thread.start()

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Stop delivering audio; returns when the worker has exited (idempotent)."""
        with self._control:
            thread = self._thread
            if thread is None:
                return
            self._stop_event.set()
            self._halt()
        if thread is threading.current_thread():
            return  # called from on_audio/on_end: the worker ends when the callback returns
        thread.join(timeout)
        if thread.is_alive():
            log.warning("%s: worker thread did not exit within %.1f s", self.name, timeout)

    @property
    def lost_ms(self) -> float:
        """Milliseconds of audio the sound system lost since start() (delivered as silence)."""
        return self.lost_samples * 1000 / SAMPLE_RATE

    def _deliver_silence(self, chunker: Chunker, on_audio: AudioCallback, samples: int,
                         *, count: bool = True) -> None:
        """Worker thread: put `samples` (16 kHz) of silence in place of lost audio, through
        `chunker`, in pieces of at most one second (bounded memory); `count` it as one
        overrun (False: the caller counted the loss already)."""
        if count:
            self.overruns += 1
        while samples > 0:
            n = min(samples, SAMPLE_RATE)
            self.lost_samples += n
            samples -= n
            for chunk in chunker.push(np.zeros(n, np.float32)):
                on_audio(chunk)

    def _work(self, on_audio: AudioCallback, on_end: EndCallback | None) -> None:
        try:
            self._produce(on_audio)
        except CaptureError as exc:
            self.error = str(exc)
            log.warning("%s: %s", self.name, exc)
        except Exception as exc:
            self.error = f"capture failed: {_one_line(exc)}"
            log.exception("%s: capture failed", self.name)
        finally:
            self._halt()
            if on_end is not None:
                try:
                    on_end()
                except Exception:
                    log.exception("%s: on_end callback failed", self.name)

    @abstractmethod
    def _open(self) -> None:
        """Check and open the source on the caller's thread; raise CaptureError if it cannot."""

    @abstractmethod
    def _produce(self, on_audio: AudioCallback) -> None:
        """Worker body: deliver audio until exhausted or `self._stop_event` is set."""

    def _halt(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release device resources so no more audio arrives (idempotent, any thread)."""


class FileSource(AudioSource):
    """An audio file played as if it were a microphone (demos, tests, `--simulate`).

    With `realtime`, chunk k is delivered once k chunks' worth of wall-clock time has passed
    since start (no accumulated drift); otherwise as fast as the callback takes them.
    """

    def __init__(self, path: Path | str, realtime: bool = True, chunk_ms: int = 100) -> None:
        self.path = Path(path)
        super().__init__(self.path.name)
        if chunk_ms <= 0:
            raise ValueError("chunk_ms must be positive")
        self.realtime = realtime
        self.chunk_ms = chunk_ms

    def _open(self) -> None:
        try:
            audio_duration(self.path)
        except AudioError as exc:
            raise CaptureError(str(exc)) from None

    def _produce(self, on_audio: AudioCallback) -> None:
        chunker = Chunker(SAMPLE_RATE * self.chunk_ms // 1000)
        block_seconds = max(1.0, self.chunk_ms / 1000)
        started = time.monotonic()
        emitted = 0
        try:
            for block in read_audio_blocks(self.path, block_seconds=block_seconds):
                for chunk in chunker.push(block):
                    if not self._deliver(on_audio, chunk, started, emitted):
                        return
                    emitted += len(chunk)
        except AudioError as exc:
            raise CaptureError(str(exc)) from None
        rest = chunker.flush()
        if rest is not None:
            self._deliver(on_audio, rest, started, emitted)

    def _deliver(
        self, on_audio: AudioCallback, chunk: np.ndarray, started: float, emitted: int
    ) -> bool:
        """Wait for the chunk's moment (realtime) and hand it over; False once stopped."""
        if self.realtime:
            due = started + (emitted + len(chunk)) / SAMPLE_RATE
            if self._stop_event.wait(max(0.0, due - time.monotonic())):
                return False
        elif self._stop_event.is_set():
            return False
        on_audio(chunk)
        return True


def _adc_time(time_info: Any) -> float | None:
    """The block's capture time (PortAudio `inputBufferAdcTime`), None where the host
    does not report one (0, or no time info)."""
    try:
        adc = float(time_info.inputBufferAdcTime)
    except (AttributeError, TypeError, ValueError):
        return None
    return adc if adc > 0 and math.isfinite(adc) else None


class MicrophoneSource(AudioSource):
    """A PortAudio input device, at its default rate and channel count, as 16 kHz mono.

    `device` is a PortAudio index, a (part of a) device name, or None for the system default.
    `on_audio` receives `block_ms` chunks (the last one, after stop(), may be shorter).

    Lost audio becomes silence of its length (see the module contract): a block the full
    queue could not take is counted in the PortAudio callback and replaced, before the next
    block that gets through (or at the end), by as many frames of silence; a block flagged
    `input_overflow` is preceded by the gap the host's input timestamps show
    (`inputBufferAdcTime`, at most MAX_GAP_S), or, where the host gives no timestamps, by
    one block of silence as an estimate.
    """

    def __init__(self, device: int | str | None = None, block_ms: int = 100) -> None:
        super().__init__("default microphone" if device is None else str(device))
        if block_ms <= 0:
            raise ValueError("block_ms must be positive")
        self.device = device
        self.block_ms = block_ms
        self.source_rate: float | None = None
        self.source_channels: int | None = None
        self._stream: Any = None
        self._queue: queue.Queue[tuple[int, np.ndarray]] = queue.Queue(maxsize=MAX_QUEUED_BLOCKS)
        self._dropped_frames = 0  # PortAudio thread: frames lost since the last queued block
        self._next_adc: float | None = None  # PortAudio thread: expected time of next block
        self._stream_finished = threading.Event()  # PortAudio says the stream has ended
        self._halted = threading.Event()  # we have stopped and closed the stream
        self._stream_lock = threading.Lock()

    def _open(self) -> None:
        sd = _sounddevice()
        self._queue = queue.Queue(maxsize=MAX_QUEUED_BLOCKS)
        self._dropped_frames = 0
        self._next_adc = None
        self._stream_finished.clear()
        self._halted.clear()
        try:
            stream = sd.InputStream(
                device=self.device,
                samplerate=None,  # the device's default rate
                channels=None,  # all of the device's input channels
                dtype="float32",
                blocksize=0,  # whatever the host delivers; the worker re-chunks
                callback=self._callback,
                finished_callback=self._stream_finished.set,
            )
        except (sd.PortAudioError, ValueError) as exc:
            raise self._open_error(exc) from None
        try:
            check_rate(round(stream.samplerate))
            self.source_rate = float(stream.samplerate)
            self.source_channels = int(stream.channels)
            self._describe(sd, stream)
            stream.start()
        except (sd.PortAudioError, AudioError) as exc:
            stream.close()
            raise CaptureError(f"cannot open microphone {self.name!r}: {_one_line(exc)}") from None
        with self._stream_lock:
            self._stream = stream

    def _open_error(self, exc: Exception) -> CaptureError:
        try:
            devices = list_input_devices()
        except CaptureError:
            devices = []
        if not devices:
            return CaptureError("no microphone found")
        return CaptureError(f"cannot open microphone {self.name!r}: {_one_line(exc)}")

    def _describe(self, sd: ModuleType, stream: Any) -> None:
        """Name the source after the device actually opened, when PortAudio can tell."""
        with contextlib.suppress(Exception):  # cosmetic only: else keep the name we were given
            self.name = str(sd.query_devices(stream.device)["name"])

    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        """PortAudio thread: copy the block and return at once (never blocks). Frames lost
        before this block travel with it: the worker puts silence of that length first."""
        adc = _adc_time(time_info)
        if status is not None and status.input_overflow:
            self.overruns += 1
            gap = frames  # the host keeps no time: assume one block was lost
            if adc is not None and self._next_adc is not None and self.source_rate:
                gap = round((adc - self._next_adc) * self.source_rate)
                gap = max(0, min(gap, round(MAX_GAP_S * self.source_rate)))
            self._dropped_frames += gap
        if adc is not None and self.source_rate:
            self._next_adc = adc + frames / self.source_rate
        try:
            self._queue.put_nowait((self._dropped_frames, indata.copy()))
            self._dropped_frames = 0
        except queue.Full:
            self.overruns += 1
            self._dropped_frames += frames

    def _halt(self) -> None:
        with self._stream_lock:
            stream, self._stream = self._stream, None
            if stream is not None:
                try:
                    stream.stop()
                finally:
                    stream.close()
                    self._halted.set()

    def _produce(self, on_audio: AudioCallback) -> None:
        assert self.source_rate is not None
        rate = self.source_rate
        resampler = None
        if round(rate) != SAMPLE_RATE:
            resampler = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
        chunker = Chunker(SAMPLE_RATE * self.block_ms // 1000)
        while True:
            try:
                block = self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                # Empty *after* the stream ended: every block it produced has been handled.
                if self._halted.is_set() or self._stream_finished.is_set():
                    if self._stop_event.is_set():
                        break
                    raise CaptureError(
                        f"microphone {self.name!r} stopped delivering audio"
                    ) from None
                continue
            lost, block = block
            if lost:
                self._silence(lost, rate, resampler, chunker, on_audio)
            mono = to_mono(block)
            out = mono if resampler is None else resampler.resample_chunk(mono)
            for chunk in chunker.push(out):
                on_audio(chunk)
        if self._dropped_frames:  # blocks dropped after the last one queued
            self._silence(self._dropped_frames, rate, resampler, chunker, on_audio)
            self._dropped_frames = 0
        if resampler is not None:
            for chunk in chunker.push(resampler.resample_chunk(np.zeros(0, np.float32), last=True)):
                on_audio(chunk)
        rest = chunker.flush()
        if rest is not None:
            on_audio(rest)

    def _silence(self, frames: int, rate: float, resampler: Any, chunker: Chunker,
                 on_audio: AudioCallback) -> None:
        """Worker thread: `frames` lost at the device rate become silence at 16 kHz. With a
        resampler the zeros go through it (its state stays continuous); `lost_samples` grows
        by the nominal 16 kHz length. (The PortAudio callback counted the overrun.)"""
        if resampler is None:
            self._deliver_silence(chunker, on_audio, frames, count=False)
            return
        left = frames
        step = max(1, round(rate))
        while left > 0:
            n = min(left, step)
            left -= n
            out = resampler.resample_chunk(np.zeros(n, np.float32))
            self.lost_samples += round(n * SAMPLE_RATE / rate)
            for chunk in chunker.push(out):
                on_audio(chunk)
