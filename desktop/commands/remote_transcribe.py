"""Transcribe files through an edge server's streaming protocol (`transcribe --server`).

Each file becomes one stream: 100 ms frames, paced at real time with `realtime`, else as
fast as the server takes them; finals become the transcript's segments. A server that is
full, starting or draining (HTTP 503/429 with Retry-After) is waited for under `retry`
(default `BATCH_RETRY`: at most 30 attempts and 5 minutes per file, each wait as the server
asks, jittered, at most 30 s); a file it still refuses after that fails alone, saying so.
`model` asks for one of the server's models (None: its default); a server that does not
serve it fails the file with the served ids in the message.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from desktop.stream_client import BATCH_RETRY, RetryPolicy, StreamClient, StreamError
from edge_server.audio import SAMPLE_RATE, AudioError, audio_duration, read_audio_blocks
from edge_server.file_transcriber import FileResult
from edge_server.formats import TimedText, Transcript

FRAME_SAMPLES = SAMPLE_RATE // 10


CERT_HINT = ("the server's certificate is not trusted: pair with it first (`earshot pair "
             "URL`), or pass --fingerprint from `earshot-server identity`")


async def stream_file(path: Path, url: str, token: str | None, realtime: bool,
                      fingerprint: str | None = None,
                      retry: RetryPolicy | None = BATCH_RETRY,
                      model: str | None = None) -> FileResult:
    result = FileResult(Path(path))
    try:
        duration = audio_duration(path)
        client = StreamClient(url, token=token, partials=False, fingerprint=fingerprint,
                              model=model)
        await client.connect(retry=retry)
        sent = 0
        started = time.monotonic()
        try:
            for block in read_audio_blocks(path, block_seconds=1.0):
                for i in range(0, len(block), FRAME_SAMPLES):
                    frame = block[i : i + FRAME_SAMPLES]
                    await client.send_audio(frame)
                    sent += len(frame)
                    if realtime:
                        delay = started + sent / SAMPLE_RATE - time.monotonic()
                        if delay > 0:
                            await asyncio.sleep(delay)
            finals = await client.finish(timeout_s=120.0 + duration)
        except BaseException:
            await client.close()
            raise
    except (AudioError, StreamError) as exc:
        hint = f" ({CERT_HINT})" if "CERTIFICATE_VERIFY_FAILED" in str(exc) else ""
        result.error = f"{path}: {exc}{hint}"
        return result
    result.transcript = Transcript(str(path), [TimedText(f.start, f.end, f.text) for f in finals
                                               if f.text], duration)
    return result


async def stream_files(paths: list[Path], url: str, token: str | None, realtime: bool,
                       concurrency: int = 4, fingerprint: str | None = None,
                       retry: RetryPolicy | None = BATCH_RETRY,
                       model: str | None = None) -> list[FileResult]:
    """Every file's result, in order; `concurrency` streams at once (a refused file waits
    under `retry` while holding its place)."""
    gate = asyncio.Semaphore(concurrency)

    async def one(p: Path) -> FileResult:
        async with gate:
            return await stream_file(p, url, token, realtime, fingerprint, retry, model)

    return list(await asyncio.gather(*(one(p) for p in paths)))
