"""Decode throughput of a server with a saturating backlog: a fixed set of dev-speech
uploads posted at once to its OpenAI-compatible endpoint (`POST /v1/audio/transcriptions`,
the same scheduler and workers as live streams; no real-time pacing and no partials, so
the workers, not the talkers, set the pace).

`upload_set(copies)`: the dev sentences (`loadtest.speech.SENTENCE_SETS`, 18 files, 86.5 s)
`copies` times, with their references. `measure(url, files, concurrency)`: a warm-up (one
upload per concurrency slot, up to 4), then every file with at most `concurrency` in flight
(aiohttp); returns audio seconds per wall second (first request sent -> last answer), the
wall time, request latency p50/p95, WER of the answers and the count of failed uploads.
The server must allow `concurrency` clip jobs (`max_clip_jobs`) or uploads get 429.
Blocking (runs its own asyncio loop); main thread.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.models_env import default_dev_dir
from edge_server.audio import read_audio
from edge_server.evaluation import read_references, word_error_rate
from loadtest.speech import SENTENCE_SETS
from loadtest.stats import percentiles


@dataclass(frozen=True)
class Upload:
    path: Path
    data: bytes
    audio_s: float
    reference: str


def upload_set(copies: int) -> list[Upload]:
    rows = [r for r in read_references(default_dev_dir() / "transcripts.tsv")
            if r.set in SENTENCE_SETS]
    once = [Upload(r.path, r.path.read_bytes(), len(read_audio(r.path)) / 16_000, r.transcript)
            for r in rows]
    return once * max(1, copies)


async def _post(session: aiohttp.ClientSession, url: str, up: Upload) -> tuple[str, float]:
    form = aiohttp.FormData()
    form.add_field("file", up.data, filename=up.path.name)
    form.add_field("model", "whisper-1")
    started = time.perf_counter()
    async with session.post(url + "/v1/audio/transcriptions", data=form) as resp:
        body = await resp.json(content_type=None)
        if resp.status != 200:
            raise RuntimeError(f"{up.path.name}: HTTP {resp.status}: {body}")
    return body["text"], time.perf_counter() - started


async def _run(url: str, files: list[Upload], concurrency: int) -> dict:
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(_post(session, url, files[i % len(files)])
                               for i in range(min(4, concurrency))))
        gate = asyncio.Semaphore(concurrency)

        async def one(up: Upload):
            async with gate:
                try:
                    return await _post(session, url, up)
                except (TimeoutError, aiohttp.ClientError, RuntimeError) as exc:
                    return exc

        started = time.perf_counter()
        results = await asyncio.gather(*(one(up) for up in files))
        wall = time.perf_counter() - started
    good = [(up, r) for up, r in zip(files, results, strict=True) if isinstance(r, tuple)]
    audio = sum(up.audio_s for up, _ in good)
    wer = word_error_rate([up.reference for up, _ in good],
                          [text for _, (text, _) in good]).wer if good else None
    lat = percentiles([s for _, (_, s) in good])
    errors = sorted({str(r)[:200] for r in results if not isinstance(r, tuple)})
    return {"files": len(files), "failed": len(files) - len(good), "errors": errors[:3],
            "audio_s": round(audio, 1), "wall_s": round(wall, 2),
            "throughput_x": round(audio / wall, 2) if wall > 0 else None,
            "latency_p50_s": lat["p50"], "latency_p95_s": lat["p95"],
            "wer": None if wer is None else round(wer, 4), "concurrency": concurrency}


def measure(url: str, files: list[Upload], concurrency: int) -> dict:
    return asyncio.run(_run(url, files, concurrency))
