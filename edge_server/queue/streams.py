"""Key names and the wire format of tasks and results (pure functions, no Redis I/O).

Layout (prefix `earshot`):
- `earshot:{model}:finals`, `earshot:{model}:partials`: task streams, one consumer group
  `workers` each. A task is one row (segment) of a batch the gateway's scheduler formed;
  batches holding a final or a clip go to `finals`, partial-only ones to `partials`.
  Workers read finals first and take up to their batch size in one XREADGROUP COUNT n.
- `earshot:{model}:dead`: dead-letter stream (a task delivered more than the poison cap).
- `earshot:results:{gateway}`: results for one gateway (group `gateway`); the gateway
  XACKs and deletes an entry once it has delivered it.
- `earshot:worker:{id}`: a worker's heartbeat hash (TTL: `heartbeat_ttl`).

Task fields: `gw` gateway id, `rid` request id (unique per gateway), `model`, `n` sample
count, `dt` "f32", `audio` raw little-endian float32 bytes (audio travels once, compact),
`t` enqueue time (Unix seconds). Result fields: `rid`, `text` or `err`, `busy` (the
engine seconds attributed to this row), `worker`.
"""

from __future__ import annotations

import time
from urllib.parse import urlsplit, urlunsplit

import numpy as np

PREFIX = "earshot"
GROUP = "workers"
RESULT_GROUP = "gateway"
SAMPLE_RATE = 16_000


class BadTask(ValueError):
    """A task entry that cannot be decoded into audio (missing field, wrong length)."""


def task_stream(model: str, urgent: bool) -> str:
    return f"{PREFIX}:{model}:{'finals' if urgent else 'partials'}"


def dead_stream(model: str) -> str:
    return f"{PREFIX}:{model}:dead"


def result_stream(gateway: str) -> str:
    return f"{PREFIX}:results:{gateway}"


def worker_key(worker_id: str) -> str:
    return f"{PREFIX}:worker:{worker_id}"


WORKER_PATTERN = f"{PREFIX}:worker:*"


def redact(url: str) -> str:
    """The queue URL fit for logs: any password replaced by `***`."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def check_url(url: str) -> str:
    """Return `url` if it is a redis:// or rediss:// URL, else raise ValueError."""
    scheme = urlsplit(url).scheme
    if scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"--queue must be a redis://, rediss:// or unix:// URL, not {url!r}")
    return url


def encode_task(gateway: str, rid: str, model: str, audio: np.ndarray) -> dict[str, bytes | str]:
    data = np.ascontiguousarray(audio, dtype="<f4")
    return {"gw": gateway, "rid": rid, "model": model, "n": str(len(data)), "dt": "f32",
            "audio": data.tobytes(), "t": f"{time.time():.3f}"}


def field(entry: dict, name: str) -> bytes:
    value = entry.get(name.encode(), entry.get(name))
    if value is None:
        raise BadTask(f"task without field '{name}'")
    return value if isinstance(value, bytes) else str(value).encode()


def text_field(entry: dict, name: str, default: str | None = None) -> str:
    try:
        return field(entry, name).decode()
    except BadTask:
        if default is None:
            raise
        return default


def decode_audio(entry: dict) -> np.ndarray:
    """The task's float32 audio; BadTask when its length does not match `n`."""
    if text_field(entry, "dt") != "f32":
        raise BadTask(f"unknown sample type {text_field(entry, 'dt')!r}")
    raw = field(entry, "audio")
    n = int(text_field(entry, "n"))
    if len(raw) != 4 * n:
        raise BadTask(f"task audio holds {len(raw)} bytes, not {n} samples")
    return np.frombuffer(raw, dtype="<f4").astype(np.float32)


def encode_result(rid: str, worker: str, text: str | None = None, error: str | None = None,
                  busy: float = 0.0) -> dict[str, str]:
    out = {"rid": rid, "worker": worker, "busy": f"{busy:.6f}"}
    if error is not None:
        out["err"] = error
    else:
        out["text"] = text or ""
    return out
