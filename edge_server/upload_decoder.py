"""Uploaded (untrusted) audio files decoded in a child process, as a stream of blocks.

    zygote = DecoderZygote()            # one per server; close() it at shutdown
    async with UploadDecoder(path, limits, zygote) as decoder:
        async for block in decoder:     # 16 kHz mono float32, limits.block_seconds each
            ...

One child process per file, forked by the decoder zygote (`decoder_zygote`: a small
process with PyAV loaded, started with the first upload and kept), running
`upload_decoder_child.child_main` (see that module for what it accepts and its
messages). POSIX only.

Contracts:
- Format allowlist, detected from the content: anything else raises `UnsupportedFormat`;
  a file of an allowed format that cannot be decoded raises `AudioError` (`invalid_file`),
  as does audio with NaN or infinite samples.
- Memory: the child blocks when its pipe is full; the server reads the next block only
  when the consumer asks for it. So the server holds about one block (plus the pipe's
  64 KB and the stream reader's 128 KB) however long the file.
- Duration: more than `limits.max_audio_s` of audio raises `AudioTooLong`: on entering
  when the header states it (or, for mp3/aac/mpeg, the packets add up to it), else as
  soon as the decoded samples pass it.
- Crashes and hangs: a child that dies without finishing (a signal, an exception) or
  breaks the protocol raises `DecoderFailed`; so does one that used more than
  `cpu_limit()` CPU seconds or sent nothing for `limits.timeout_s` while a block was
  awaited (`timed_out`; the wall clock runs only while the server waits, never while the
  consumer is busy). The child is killed and reaped on every exit path, cancellation
  included. When no child can be started, `DecoderUnavailable`.
Runs on the event loop; one decoder per upload, not shared between tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import edge_server
from edge_server.audio import SAMPLE_RATE, AudioError
from edge_server.upload_decoder_child import HEADER, SUPPORTED_TEXT, TAGS

log = logging.getLogger(__name__)

CPU_SECONDS_PER_MB = 10.0
MAX_CPU_SECONDS = 600
ZYGOTE_START_S = 60.0  # the zygote loads PyAV: seconds before it is given up on
FORK_ANSWER_S = 30.0  # the zygote answers a request with the child's pid within this


class UnsupportedFormat(AudioError):
    """The file's format (or codec) is not on the allowlist."""


class AudioTooLong(AudioError):
    """The file holds more audio than `max_upload_audio_s`."""

    def __init__(self, limit_s: float, found_s: float | None = None) -> None:
        limit = f"{limit_s:g} s ({_human(limit_s)})"
        found = f"the audio is {_human(found_s)} long" if found_s else "the audio is longer"
        super().__init__(f"{found}: this server takes at most {limit} per upload "
                         "(setting max_upload_audio_s)")
        self.limit_s = limit_s


def _human(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.3g} h"
    return f"{seconds / 60:.3g} min" if seconds >= 60 else f"{seconds:.3g} s"


class DecoderUnavailable(RuntimeError):
    """No decoder process could be started (the server's fault, not the file's)."""


class DecoderFailed(AudioError):
    """The decoder process crashed, hung or broke its protocol on this file."""

    def __init__(self, message: str, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


@dataclass(frozen=True)
class DecodeLimits:
    max_audio_s: float = 4 * 3600.0
    timeout_s: float = 30.0  # no block for this long while awaited: hung
    cpu_base_s: float | None = None  # CPU seconds before the per-MB allowance (timeout_s)
    block_seconds: float = 5.0
    memory_mb: int = 1024  # the child's address space (the zygote maps ~250 MB of it)


def cpu_limit(limits: DecodeLimits, file_size: int) -> int:
    """CPU seconds the child may use: the base plus 10 per MB of file, at most 600."""
    base = limits.timeout_s if limits.cpu_base_s is None else limits.cpu_base_s
    return max(1, int(min(MAX_CPU_SECONDS, base + CPU_SECONDS_PER_MB * file_size / 1e6)))


def _protocol_error() -> DecoderFailed:
    return DecoderFailed("the decoder broke its protocol on this file")


def _json(payload: bytes) -> dict:
    """A JSON object from the child, or DecoderFailed."""
    try:
        value = json.loads(payload)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise _protocol_error()
    return value


# ---- the zygote, seen from the server -----------------------------------------------------
@dataclass(eq=False)
class Child:
    """One decoding child: its pid once forked, its exit code once reaped (None: unknown,
    the zygote died)."""

    id: int
    forked: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop()
                                   .create_future())
    exited: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop()
                                   .create_future())


class DecoderZygote:
    """Starts `decoder_zygote` when first needed (again if it died) and forks children
    through it. Event loop only; `close()` ends it (and any child it still has)."""

    def __init__(self) -> None:
        self._proc: asyncio.subprocess.Process | None = None
        self._sock: socket.socket | None = None
        self._events: asyncio.Task | None = None
        self._children: dict[int, Child] = {}
        self._ids = itertools.count(1)
        self._fork_lock = asyncio.Lock()  # one decode request on the socket at a time
        self._send_lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def fork(self, fd: int, path: Path, block_seconds: float, cpu_seconds: int,
                   memory_mb: int, max_seconds: float) -> Child:
        """A child decoding `path` into the pipe write end `fd` (the caller closes `fd`)."""
        async with self._fork_lock:
            await self._ensure_running()
            child = Child(next(self._ids))
            self._children[child.id] = child
            request = {"op": "decode", "id": child.id, "path": str(path),
                       "block_seconds": block_seconds, "cpu_seconds": cpu_seconds,
                       "memory_mb": memory_mb, "max_seconds": max_seconds}
            try:
                await self._send(request, fd)
                await asyncio.wait_for(asyncio.shield(child.forked), FORK_ANSWER_S)
            except (OSError, TimeoutError) as exc:
                self._children.pop(child.id, None)
                raise DecoderUnavailable(f"cannot start the audio decoder ({exc})") from None
            if child.forked.result() is None:
                raise DecoderUnavailable("the audio decoder service stopped")
            return child

    async def kill(self, child: Child) -> None:
        """SIGKILL the child if it still runs (the zygote knows; it reaps them itself)."""
        if child.exited.done() or self._sock is None:
            return
        with contextlib.suppress(OSError):
            await self._send({"op": "kill", "id": child.id})

    async def close(self) -> None:
        sock, proc, self._sock, self._proc = self._sock, self._proc, None, None
        if sock is not None:
            sock.close()  # the zygote kills its children and exits
        if proc is not None:
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._events is not None:
            await asyncio.gather(self._events, return_exceptions=True)

    async def _send(self, request: dict, fd: int | None = None) -> None:
        sock = self._sock
        if sock is None:
            raise OSError("the decoder zygote is not running")
        line = (json.dumps(request) + "\n").encode()

        def send() -> None:
            with self._send_lock:
                if fd is None:
                    sock.sendall(line)
                else:
                    socket.send_fds(sock, [line], [fd])

        await asyncio.get_running_loop().run_in_executor(None, send)

    async def _ensure_running(self) -> None:
        if self._proc is not None and self._proc.returncode is None and self._sock is not None:
            return
        await self.close()  # whatever is left of a zygote that died
        if os.name != "posix" or not hasattr(socket, "send_fds"):
            raise DecoderUnavailable("decoding uploads needs a POSIX system (Linux, macOS)")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "edge_server.decoder_zygote", str(theirs.fileno()),
                pass_fds=(theirs.fileno(),), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, env=_zygote_env())
        except OSError as exc:
            ours.close()
            raise DecoderUnavailable(f"cannot start the audio decoder ({exc})") from None
        finally:
            theirs.close()
        self._sock = ours
        assert self._proc.stdout is not None
        try:
            line = await asyncio.wait_for(self._proc.stdout.readline(), ZYGOTE_START_S)
        except TimeoutError:
            line = b""
        try:
            ready = json.loads(line or b"{}").get("ready") is True
        except (ValueError, AttributeError):
            ready = False
        if not ready:
            await self.close()
            raise DecoderUnavailable("the audio decoder did not start")
        self._events = asyncio.get_running_loop().create_task(self._read_events(self._proc))
        log.info("upload decoder zygote started (pid %d)", self._proc.pid)

    async def _read_events(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            try:
                event = json.loads(line)
                child = self._children.get(event["id"])
            except (ValueError, KeyError, TypeError):
                log.warning("decoder zygote said %r", line[:200])
                continue
            if child is None:
                continue
            if "pid" in event and not child.forked.done():
                child.forked.set_result(event["pid"])
            elif "exit" in event:
                self._children.pop(child.id, None)
                if not child.forked.done():
                    child.forked.set_result(None)
                if not child.exited.done():
                    child.exited.set_result(event["exit"])
        if self._proc is proc:  # not close(): it died (its children are orphans now)
            log.warning("the upload decoder zygote exited (status %s)", await proc.wait())
        for child in self._children.values():
            for fut in (child.forked, child.exited):
                if not fut.done():
                    fut.set_result(None)
        self._children.clear()
        if self._proc is proc:
            self._sock, sock = None, self._sock
            if sock is not None:
                sock.close()


def _zygote_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    root = str(Path(edge_server.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


# ---- one upload ---------------------------------------------------------------------------
class UploadDecoder:
    def __init__(self, path: Path, limits: DecodeLimits | None,
                 zygote: DecoderZygote) -> None:
        self.path = Path(path)
        self.limits = limits or DecodeLimits()
        self.zygote = zygote
        self.size = self.path.stat().st_size if self.path.exists() else 0
        self.cpu_seconds = cpu_limit(self.limits, self.size)
        self.info: dict = {}
        self.samples = 0
        self.bad_packets = 0
        self.child: Child | None = None
        self._reader: asyncio.StreamReader | None = None
        self._transport: asyncio.ReadTransport | None = None
        self._finished = False

    @property
    def pid(self) -> int | None:
        if self.child is None or not self.child.forked.done():
            return None
        return self.child.forked.result()

    async def __aenter__(self) -> UploadDecoder:
        if self.size == 0:
            raise AudioError("the file is empty")
        loop = asyncio.get_running_loop()
        read_fd, write_fd = os.pipe()
        try:
            self._reader = asyncio.StreamReader()
            self._transport, _ = await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(self._reader),
                os.fdopen(read_fd, "rb", buffering=0))
        except BaseException:
            os.close(read_fd)
            os.close(write_fd)
            raise
        try:
            try:
                limits = self.limits
                self.child = await self.zygote.fork(
                    write_fd, self.path, limits.block_seconds, self.cpu_seconds,
                    limits.memory_mb, limits.max_audio_s)
            finally:
                os.close(write_fd)  # the child has its own: EOF comes when it is done
            tag, payload = await self._next()
            if tag != b"I":
                self._refusal(tag, payload)
            self.info = _json(payload)
        except BaseException:
            await self._stop()
            raise
        return self

    async def __aexit__(self, *exc) -> None:
        await self._stop()

    def __aiter__(self) -> AsyncIterator[np.ndarray]:
        return self._blocks()

    async def _blocks(self) -> AsyncIterator[np.ndarray]:
        limit = int(self.limits.max_audio_s * SAMPLE_RATE)
        while not self._finished:
            tag, payload = await self._next()
            if tag == b"A":
                if len(payload) % 4:
                    raise _protocol_error()
                block = np.frombuffer(payload, dtype="<f4").astype(np.float32)  # a copy
                if not np.isfinite(block).all():
                    raise AudioError("the audio contains NaN or infinite samples")
                self.samples += len(block)
                if self.samples > limit:
                    raise AudioTooLong(self.limits.max_audio_s)
                yield block
            elif tag == b"D":
                self._finished = True
                self.bad_packets = int(_json(payload).get("bad_packets", 0))
                if self.bad_packets:
                    log.info("upload decoded with %d undecodable frame(s) skipped",
                             self.bad_packets)
            else:
                self._refusal(tag, payload)

    # ---- the pipe ------------------------------------------------------------------------
    async def _next(self) -> tuple[bytes, bytes]:
        """The child's next message, or DecoderFailed (crash, garbage, stall)."""
        try:
            return await asyncio.wait_for(self._read(), self.limits.timeout_s)
        except TimeoutError:
            raise DecoderFailed(f"decoding this file timed out (no audio for "
                                f"{self.limits.timeout_s:g} s)", timed_out=True) from None
        except asyncio.IncompleteReadError:
            raise await self._crashed() from None

    async def _read(self) -> tuple[bytes, bytes]:
        assert self._reader is not None
        tag, length = HEADER.unpack(await self._reader.readexactly(HEADER.size))
        max_len = int(self.limits.block_seconds * SAMPLE_RATE) * 4 + 4096
        if tag not in TAGS or length > max_len:
            raise _protocol_error()
        return tag, await self._reader.readexactly(length)

    def _refusal(self, tag: bytes, payload: bytes) -> None:
        """Raise what an `E` message (or a message out of place) means."""
        if tag != b"E":
            raise _protocol_error()
        error = _json(payload)
        code, message = error.get("code"), str(error.get("message", "unreadable file"))
        if code == "unsupported_format":
            raise UnsupportedFormat(message)
        if code == "audio_too_long":
            found = error.get("duration")
            raise AudioTooLong(self.limits.max_audio_s,
                               found if isinstance(found, (int, float)) else None)
        raise AudioError(message)

    async def _crashed(self) -> DecoderFailed:
        """What to raise when the child's messages ended early."""
        assert self.child is not None
        try:
            code = await asyncio.wait_for(asyncio.shield(self.child.exited), 10)
        except TimeoutError:
            code = None
        if code == -signal.SIGXCPU:
            return DecoderFailed(f"decoding this file timed out (more than "
                                 f"{self.cpu_seconds} s of CPU time)", timed_out=True)
        how = (f"signal {signal.Signals(-code).name}" if isinstance(code, int) and code < 0
               else f"exit status {code}")
        log.warning("upload decoder crashed (%s) on %s (%d bytes)", how, self.path, self.size)
        return DecoderFailed(f"the decoder crashed on this file ({how}); the file is "
                             f"damaged or not really audio (supported: {SUPPORTED_TEXT})")

    async def _stop(self) -> None:
        """Kill the child if it still runs and wait until it is reaped; close the pipe."""
        child = self.child
        if child is not None and not child.exited.done():
            await self.zygote.kill(child)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(child.exited), 10)
        if self._transport is not None:
            self._transport.close()
            self._transport = None
