"""The body of an inference worker process: owns one engine, decodes batches from a pipe.

The worker loads every model it is given (one engine each, all in this process; the
first is the default). Messages parent -> child: ("batch", batch_id, [float32 arrays],
model_id or None for the default[, prefixes]) or ("stop",); `prefixes`: None or one tuple
of token ids per row, a draft the engine verifies (AsrEngine.decode_batch; partials).
Child -> parent: ("ready", info) with info["models"] listing the loaded ids and
info["model"] the default, ("result", batch_id, texts, busy_seconds, tokens) with each
row's token ids (tuples; empty for an engine without tokens), ("error", batch_id,
message) for a batch the engine refused or a model not loaded (the worker lives on).
A crash (segfault, OOM kill, os._exit) closes the pipe; the parent requeues the batch.

Fault injection for tests of recovery: EARSHOT_WORKER_FAULT="<mode>-if-peak-above=X" acts
when a batch holds a sample with |value| >= X. Modes: `crash` (the process exits
abruptly), `raise` (the engine raises: the batch gets an error reply), `hang` (the worker
sleeps forever: the parent's deadline must kill it).
"""

from __future__ import annotations

import logging
import os
import time
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edge_server.engine import AsrEngine

FAULT_MODES = ("crash", "raise", "hang")


def _fault() -> tuple[str, float] | None:
    """(mode, threshold) from EARSHOT_WORKER_FAULT, or None."""
    spec = os.environ.get("EARSHOT_WORKER_FAULT", "")
    mode, sep, value = spec.partition("-if-peak-above=")
    if sep and mode in FAULT_MODES:
        return mode, float(value)
    return None


def _load(model_ids: tuple[str, ...], device: str, threads: int | None,
          noop: bool) -> dict[str, AsrEngine]:
    """One engine per id (the catalog default for none), in order; the first is the default.
    The no-op engine stands in for every id ("noop" when none is given)."""
    from edge_server.engine import create_engine
    from edge_server.engine.noop import NoopEngine

    engines: dict[str, AsrEngine] = {}
    if noop:
        for model_id in model_ids or ("noop",):
            engines[model_id] = NoopEngine()
        return engines
    for model_id in model_ids or (None,):
        engine = create_engine(model_id, device=device, threads=threads)
        engines[engine.model_id] = engine
    return engines


def worker_main(conn: Connection, model_ids: tuple[str, ...] | str | None, device: str,
                threads: int | None, noop: bool) -> None:
    """Entry point of a worker process (multiprocessing 'spawn')."""
    logging.basicConfig(level=logging.WARNING)
    if isinstance(model_ids, str) or model_ids is None:
        model_ids = (model_ids,) if model_ids else ()
    try:
        engines = _load(tuple(model_ids), device, threads, noop)
    except Exception as exc:  # report why loading failed, then exit
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    default = next(iter(engines))
    first = engines[default]
    conn.send(("ready", {"model": default, "models": list(engines),
                         "provider": first.provider, "device": first.device,
                         "pid": os.getpid()}))
    fault = _fault()
    parent = os.getppid()
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg[0] == "stop":
            return
        _, batch_id, audios, *rest = msg
        engine = engines.get(rest[0] if rest and rest[0] else default)
        faulty = fault is not None and any(
            len(a) and float(abs(a).max()) >= fault[1] for a in audios)
        if faulty and fault[0] == "crash":
            os._exit(77)
        while faulty and fault[0] == "hang":
            time.sleep(0.5)
            if os.getppid() != parent:  # never outlive the server while hung
                os._exit(0)
        started = time.perf_counter()
        try:
            if faulty:
                raise ValueError("injected engine fault (EARSHOT_WORKER_FAULT)")
            if engine is None:
                raise ValueError(f"model '{rest[0]}' is not loaded in this worker (loaded: "
                                 f"{', '.join(engines)})")
            rows = engine.decode_batch(audios, rest[1] if len(rest) > 1 else None)
            reply = ("result", batch_id, [r.text for r in rows], time.perf_counter() - started,
                     [r.tokens for r in rows])
        except Exception as exc:
            reply = ("error", batch_id, f"{type(exc).__name__}: {exc}")
        try:
            conn.send(reply)
        except (BrokenPipeError, EOFError, OSError):
            return  # the server is gone

