"""Key names and the wire format of tasks and results (pure functions, no Redis I/O).

Layout (prefix `earshot`):
- `earshot:{model}:finals`, `earshot:{model}:partials`: task streams, one consumer group
  `workers` each. A task is one row (segment) of a batch the gateway's scheduler formed;
  batches holding a final or a clip go to `finals`, partial-only ones to `partials`.
  Workers read finals first and take up to their batch size in one XREADGROUP COUNT n.
- `earshot:{model}:dead`: dead-letter stream (a task delivered more than the poison cap).
- `earshot:results:{gateway}`: results for one gateway (group `gateway`); the gateway
  XACKs and deletes an entry once it has delivered it. Only the gateway creates it, with a
  TTL it refreshes while it lives (`queue_results_ttl_s`); workers add with NOMKSTREAM
  (XADD keeps a key's TTL and never creates it), so a dead gateway's stream expires and is
  not resurrected by late results (those are dropped).
- `earshot:worker:{id}`: a worker's heartbeat hash (TTL: `heartbeat_ttl`).

Task fields: `gw` gateway id, `rid` request id (unique per gateway), `model`, `n` sample
count, `dt` "f32", `audio` raw little-endian float32 bytes (audio travels once, compact),
`t` enqueue time (Unix seconds), optional `pfx` (a partial's forced token prefix: raw
little-endian int32 ids). Result fields: `rid`, `text` or `err`, `busy` (the engine seconds
attributed to this row), `worker`, optional `tok` (the row's token ids, int32 like `pfx`).
"""

from __future__ import annotations

import time
from urllib.parse import urlsplit, urlunsplit

import numpy as np

PREFIX = "earshot"
GROUP = "workers"
RESULT_GROUP = "gateway"
SAMPLE_RATE = 16_000
# Every command the gateway and the workers send (Redis >= 6.2: XADD NOMKSTREAM, XAUTOCLAIM).
# An ACL user needs exactly these on `earshot:*` keys: `acl_setuser()`, docs/scale-out.md.
COMMANDS = ("ping", "multi", "exec", "scan", "del", "pexpire", "hset", "hgetall", "xadd",
            "xlen", "xrange", "xdel", "xack", "xreadgroup", "xpending", "xclaim", "xautoclaim",
            "xgroup|create", "exists", "xinfo|consumers", "xgroup|delconsumer")


def acl_setuser(user: str = "earshot", password: str = "PASSWORD") -> str:
    """The `ACL SETUSER` line of a Redis user limited to Earshot's keys and commands."""
    return (f"ACL SETUSER {user} on >{password} resetkeys ~{PREFIX}:* resetchannels -@all "
            + " ".join(f"+{c}" for c in COMMANDS))


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


def probe_key(token: str) -> str:
    """Scratch keys of the start-up permission check (worker_cli.check_access)."""
    return f"{PREFIX}:probe:{token}"


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


def encode_task(gateway: str, rid: str, model: str, audio: np.ndarray,
                prefix: tuple[int, ...] = ()) -> dict[str, bytes | str]:
    data = np.ascontiguousarray(audio, dtype="<f4")
    task: dict[str, bytes | str] = {"gw": gateway, "rid": rid, "model": model,
                                    "n": str(len(data)), "dt": "f32", "audio": data.tobytes(),
                                    "t": f"{time.time():.3f}"}
    if prefix:
        task["pfx"] = encode_ids(prefix)
    return task


def encode_ids(ids) -> bytes:
    """Token ids as raw little-endian int32 (the `pfx` and `tok` fields)."""
    return np.asarray(ids, dtype="<i4").tobytes()


def decode_ids(entry: dict, name: str) -> tuple[int, ...]:
    """The int32 ids of field `name` (() when absent); BadTask when not whole int32s."""
    raw = entry.get(name.encode(), entry.get(name))
    if not raw:
        return ()
    if isinstance(raw, str):
        raw = raw.encode()
    if len(raw) % 4:
        raise BadTask(f"field '{name}' holds {len(raw)} bytes, not whole int32 token ids")
    return tuple(int(t) for t in np.frombuffer(raw, dtype="<i4"))


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
                  busy: float = 0.0, tokens: tuple[int, ...] = ()) -> dict[str, str | bytes]:
    out: dict[str, str | bytes] = {"rid": rid, "worker": worker, "busy": f"{busy:.6f}"}
    if error is not None:
        out["err"] = error
    else:
        out["text"] = text or ""
        if tokens:
            out["tok"] = encode_ids(tokens)
    return out
