"""The body of an inference worker process: owns one engine, decodes batches from a pipe.

Messages parent -> child: ("batch", batch_id, [float32 arrays]) or ("stop",).
Child -> parent: ("ready", info), ("result", batch_id, texts, busy_seconds),
("error", batch_id, message) for a batch the engine refused (the worker lives on).
A crash (segfault, OOM kill, os._exit) closes the pipe; the parent requeues the batch.

EARSHOT_WORKER_FAULT="crash-if-peak-above=X" makes the worker exit abruptly when a batch
holds a sample with |value| >= X: a fault-injection hook for tests of crash recovery.
"""

from __future__ import annotations

import logging
import os
import time
from multiprocessing.connection import Connection


def _fault_threshold() -> float | None:
    spec = os.environ.get("EARSHOT_WORKER_FAULT", "")
    if spec.startswith("crash-if-peak-above="):
        return float(spec.split("=", 1)[1])
    return None


def worker_main(conn: Connection, model_id: str | None, device: str, threads: int | None,
                noop: bool) -> None:
    """Entry point of a worker process (multiprocessing 'spawn')."""
    logging.basicConfig(level=logging.WARNING)
    from edge_server.engine import create_engine
    from edge_server.engine.noop import NoopEngine

    try:
        engine = NoopEngine() if noop else create_engine(model_id, device=device, threads=threads)
    except Exception as exc:  # report why loading failed, then exit
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", {"model": engine.model_id, "provider": engine.provider,
                         "device": engine.device, "pid": os.getpid()}))
    fault = _fault_threshold()
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg[0] == "stop":
            return
        _, batch_id, audios = msg
        if fault is not None and any(len(a) and float(abs(a).max()) >= fault for a in audios):
            os._exit(77)
        started = time.perf_counter()
        try:
            texts = engine.transcribe_batch(audios)
            reply = ("result", batch_id, texts, time.perf_counter() - started)
        except Exception as exc:
            reply = ("error", batch_id, f"{type(exc).__name__}: {exc}")
        try:
            conn.send(reply)
        except (BrokenPipeError, EOFError, OSError):
            return  # the server is gone

