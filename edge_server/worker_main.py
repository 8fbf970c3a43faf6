"""The body of an inference worker process: owns one engine, decodes batches from a pipe.

Messages parent -> child: ("batch", batch_id, [float32 arrays]) or ("stop",).
Child -> parent: ("ready", info), ("result", batch_id, texts, busy_seconds),
("error", batch_id, message) for a batch the engine refused (the worker lives on).
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

FAULT_MODES = ("crash", "raise", "hang")


def _fault() -> tuple[str, float] | None:
    """(mode, threshold) from EARSHOT_WORKER_FAULT, or None."""
    spec = os.environ.get("EARSHOT_WORKER_FAULT", "")
    mode, sep, value = spec.partition("-if-peak-above=")
    if sep and mode in FAULT_MODES:
        return mode, float(value)
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
    fault = _fault()
    parent = os.getppid()
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg[0] == "stop":
            return
        _, batch_id, audios = msg
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
            texts = engine.transcribe_batch(audios)
            reply = ("result", batch_id, texts, time.perf_counter() - started)
        except Exception as exc:
            reply = ("error", batch_id, f"{type(exc).__name__}: {exc}")
        try:
            conn.send(reply)
        except (BrokenPipeError, EOFError, OSError):
            return  # the server is gone

