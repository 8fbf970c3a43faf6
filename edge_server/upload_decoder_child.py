"""Decode one untrusted audio file in a forked child process (see `decoder_zygote`).

Never run inside the server: a decoder that crashes or hangs on a crafted file takes only
its own process with it. `child_main`, run in a child forked by the decoder zygote (which
has PyAV loaded, so a child starts in milliseconds):

1. limits its own process: CPU time (`cpu_seconds`: SIGXCPU, then SIGKILL 2 s later),
   address space (`memory_mb`), no core dumps, no file writes;
2. opens the file with FFmpeg (PyAV), which detects the format from the content (the
   server's temporary file has no extension), with FFmpeg's `format_whitelist` set to
   `ALLOWED_FORMATS` (any other demuxer is refused before it reads the header),
   `protocol_whitelist=file` and `codec_whitelist` (FFmpeg opens no other decoder, not
   even to probe a video stream); the first audio stream's codec must be in
   `ALLOWED_CODECS`;
3. decodes that stream (other streams, e.g. a video's picture, are never decoded) to
   16 kHz mono float32 with FFmpeg's resampler and writes blocks of `block_seconds`. A
   packet that does not decode is skipped (a damaged frame, the torn last frame of a
   truncated file); `MAX_BAD_PACKETS` in a row is corrupt data.

Output on the pipe `fd`: messages of a 1-byte tag, a 4-byte little-endian length and the
payload (`HEADER`):
- `I` JSON `{"format", "codec", "duration"}` once, first (duration: seconds the header
  states, or counted from the packets for formats whose header only estimates it; null
  when unknown);
- `A` float32 little-endian samples (a block), not checked for NaN (the reader does);
- `E` JSON `{"code", "message"}`: the file is refused (`unsupported_format`,
  `invalid_file`, or `audio_too_long` with the `duration` when the header or the packets
  already say it is longer than `max_seconds`: then instead of `I`); the last message;
- `D` JSON `{"bad_packets"}`: the end of the audio; the last message.
Writes block while the pipe is full (the reader is slow): the pipe is the backpressure.
A child that ends without `E` or `D` crashed.

Test hook: when the environment has `EARSHOT_DECODER_TEST_FAULTS=1`, a file starting with
`EARSHOT-TEST-ABORT` makes the child `os.abort()`, `EARSHOT-TEST-SPIN` makes it loop
forever on the CPU, `EARSHOT-TEST-SLEEP` makes it sleep forever. Only the tests set it.

Imports only the standard library at import time (the server imports it for the
allowlists); PyAV is imported where it is used (the zygote preloads it). NumPy is not
needed.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import time

# FFmpeg demuxer name -> what users call it
ALLOWED_FORMATS: dict[str, str] = {
    "wav": "wav",
    "flac": "flac",
    "mp3": "mp3",
    "ogg": "ogg/opus",
    "mov,mp4,m4a,3gp,3g2,mj2": "m4a/mp4/mov/3gp",
    "matroska,webm": "webm/mkv",
    "aac": "aac",
    "aiff": "aiff",
    "caf": "caf",
    "asf": "wma",
    "amr": "amr",
    "mpeg": "mpeg",
}
FORMAT_WHITELIST = "wav,flac,mp3,ogg,mov,matroska,aac,aiff,caf,asf,amr,mpeg"
ALLOWED_CODECS = frozenset({
    "pcm_u8", "pcm_s8", "pcm_s16le", "pcm_s16be", "pcm_s24le", "pcm_s24be", "pcm_s32le",
    "pcm_s32be", "pcm_f32le", "pcm_f32be", "pcm_f64le", "pcm_f64be", "pcm_alaw", "pcm_mulaw",
    "adpcm_ima_wav", "adpcm_ms", "flac", "alac", "mp3", "mp3float", "mp2", "mp2float",
    "aac", "vorbis", "opus", "libopus", "wmav1", "wmav2", "amrnb", "amrwb",
})
# formats whose header only estimates the duration (from the bit rate): counted instead
ESTIMATED_DURATION = frozenset({"mp3", "aac", "mpeg"})
SUPPORTED_TEXT = ", ".join(dict.fromkeys(ALLOWED_FORMATS.values()))
MAX_BAD_PACKETS = 50
SAMPLE_RATE = 16_000
TEST_FAULTS_ENV = "EARSHOT_DECODER_TEST_FAULTS"
TAGS = (b"I", b"A", b"E", b"D")
HEADER = struct.Struct("<cI")


class Refused(Exception):
    """The file is refused: `code` is the API error code, the message one line."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def sniff(head: bytes) -> str | None:
    """The allowed format `head` (the file's first bytes) looks like, or None.

    Only used to word an error: a file that starts like FLAC but does not open is a broken
    FLAC file (`invalid_file`), not an unsupported format.
    """
    if head[:4] in (b"RIFF", b"RF64", b"BW64") and head[8:12] == b"WAVE":
        return "wav"
    signatures = {b"fLaC": "flac", b"OggS": "ogg/opus", b"\x1a\x45\xdf\xa3": "webm/mkv",
                  b"caff": "caf", b"#!AM": "amr", b"\x00\x00\x01\xba": "mpeg", b"ID3": "mp3"}
    for magic, name in signatures.items():
        if head.startswith(magic):
            return name
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"wide", b"free"):
        return "m4a/mp4/mov/3gp"
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "aiff"
    if head[:8] == b"\x30\x26\xb2\x75\x8e\x66\xcf\x11":
        return "wma"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        return "aac" if (head[1] >> 1) & 3 == 0 else "mp3"
    return None


def limit_resources(cpu_seconds: int, memory_mb: int) -> None:
    """CPU time, address space, no core files, no file writes (POSIX)."""
    import resource

    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 2))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    if memory_mb > 0:
        resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))


class Sender:
    """Framed messages on a pipe (blocking writes)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def send(self, tag: bytes, payload: bytes | bytearray | memoryview = b"") -> None:
        self._write(HEADER.pack(tag, len(payload)))
        self._write(memoryview(payload))

    def send_json(self, tag: bytes, value: dict) -> None:
        self.send(tag, json.dumps(value).encode())

    def _write(self, data) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]


def _test_fault(path: str) -> None:
    if os.environ.get(TEST_FAULTS_ENV) != "1":
        return
    with open(path, "rb") as fh:
        head = fh.read(32)
    if head.startswith(b"EARSHOT-TEST-ABORT"):
        os.abort()
    if head.startswith(b"EARSHOT-TEST-SPIN"):
        while True:
            pass
    if head.startswith(b"EARSHOT-TEST-SLEEP"):
        while True:
            time.sleep(60)


def _reason(exc: Exception) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return text.split(":")[0].strip() or type(exc).__name__


def open_container(path: str):
    """The container of an allowed format with an allowed audio codec, else Refused."""
    import av

    options = {"format_whitelist": FORMAT_WHITELIST, "protocol_whitelist": "file",
               "codec_whitelist": ",".join(sorted(ALLOWED_CODECS))}
    try:
        container = av.open(path, mode="r", options=options)
    except MemoryError:
        raise
    except (av.error.FFmpegError, OSError, UnicodeDecodeError, ValueError) as exc:
        with open(path, "rb") as fh:
            looks_like = sniff(fh.read(16))
        if looks_like is not None:
            raise Refused("invalid_file", f"the file looks like {looks_like} but cannot be read "
                          f"({_reason(exc)}; truncated or damaged?)") from None
        raise Refused("unsupported_format", "the file is not in a supported audio format "
                      f"(supported: {SUPPORTED_TEXT})") from None
    fmt = container.format.name
    if fmt not in ALLOWED_FORMATS:  # the whitelist already refused it; belt and braces
        container.close()
        raise Refused("unsupported_format", f"{fmt} files are not supported "
                      f"(supported: {SUPPORTED_TEXT})")
    if not container.streams.audio:
        container.close()
        raise Refused("invalid_file", f"the {ALLOWED_FORMATS[fmt]} file has no audio stream")
    codec = container.streams.audio[0].codec_context.name
    if codec not in ALLOWED_CODECS:
        container.close()
        raise Refused("unsupported_format", f"the audio codec {codec} is not supported "
                      f"(supported: {SUPPORTED_TEXT} with their usual codecs)")
    return container


def stated_duration(container) -> float | None:
    stream = container.streams.audio[0]
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration:
        import av

        return container.duration / av.time_base
    return None


def counted_duration(path: str, stop_after: float) -> float:
    """Seconds of audio counted from the packets (no decoding), stopping past `stop_after`."""
    container = open_container(path)
    total = 0.0
    with container:
        stream = container.streams.audio[0]
        try:
            for packet in container.demux(stream):
                if packet.duration and packet.time_base:
                    total += float(packet.duration * packet.time_base)
                if total > stop_after:
                    break
        except MemoryError:
            raise
        except Exception:  # a damaged tail: what was counted stands; decoding will tell
            pass
    return total


def decode(path: str, sender: Sender, block_seconds: float, max_seconds: float) -> None:
    import av

    container = open_container(path)
    with container:
        fmt = container.format.name
        stream = container.streams.audio[0]
        codec = stream.codec_context.name
        duration = stated_duration(container)
        if fmt in ESTIMATED_DURATION:
            duration = counted_duration(path, max_seconds)
        if duration is not None and duration > max_seconds:
            sender.send_json(b"E", {"code": "audio_too_long", "duration": duration,
                                    "message": f"{duration:.0f} s of audio"})
            return
        sender.send_json(b"I", {"format": ALLOWED_FORMATS[fmt], "codec": codec,
                                "duration": duration})
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        block = max(1, int(block_seconds * SAMPLE_RATE)) * 4  # bytes
        pending = bytearray()
        sent = bad = bad_run = 0

        def take(frames) -> None:
            nonlocal sent
            for out in frames:
                pending.extend(memoryview(out.planes[0])[: out.samples * 4])
            while len(pending) >= block:
                sender.send(b"A", memoryview(pending)[:block])
                del pending[:block]
                sent += block

        try:
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except MemoryError:
                    raise
                except (av.error.FFmpegError, ValueError):
                    bad += 1
                    bad_run += 1
                    if bad_run >= MAX_BAD_PACKETS:
                        raise Refused("invalid_file", "the audio data is corrupt "
                                      f"({MAX_BAD_PACKETS} frames in a row do not decode)"
                                      ) from None
                    continue
                bad_run = 0
                for frame in frames:
                    take(resampler.resample(frame))
        except MemoryError:
            raise
        except av.error.FFmpegError as exc:  # the demuxer gave up: a damaged or torn file
            if not sent and not pending:
                raise Refused("invalid_file", f"the audio data is corrupt ({_reason(exc)})"
                              ) from None
        take(resampler.resample(None))
        if pending:
            sender.send(b"A", pending)
        sender.send_json(b"D", {"bad_packets": bad})


def child_main(path: str, fd: int, block_seconds: float, cpu_seconds: int, memory_mb: int,
               max_seconds: float) -> None:
    """The child process: decode `path` and write its messages to the pipe `fd`."""
    sender = Sender(fd)
    error = _run(path, sender, block_seconds, cpu_seconds, memory_mb, max_seconds)
    if error is not None:
        with contextlib.suppress(BrokenPipeError):
            sender.send_json(b"E", error)
    os.close(fd)


def _run(path: str, sender: Sender, block_seconds: float, cpu_seconds: int, memory_mb: int,
         max_seconds: float) -> dict | None:
    """Decode; the `E` message to send when the file is refused, else None."""
    try:
        limit_resources(cpu_seconds, memory_mb)
        _test_fault(path)
        decode(path, sender, block_seconds, max_seconds)
    except Refused as exc:
        return {"code": exc.code, "message": str(exc)}
    except MemoryError:
        return {"code": "invalid_file",
                "message": f"decoding the file needs more than {memory_mb} MB of memory"}
    except BrokenPipeError:  # the server stopped reading (request over): nothing to say
        pass
    return None
