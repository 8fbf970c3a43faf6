"""`earshot-worker`: an inference worker fed through Redis Streams (any machine).

    earshot-worker --queue redis://:PASSWORD@gateway:6379/0 --model moonshine-base-en \
        --device cuda --batch 16

Contract (stream layout and wire format: streams.py):
- Reads its model's `finals` stream first, then `partials`, up to `--batch` tasks in one
  XREADGROUP COUNT n (consumer group `workers`, consumer = the worker id), decodes them as
  one batch, writes each task's result to the asking gateway's result stream, and only
  then XACKs (and XDELs) the tasks.
- Crash recovery: while it decodes, a heartbeat thread keeps its pending tasks fresh
  (XCLAIM JUSTID: idle time reset, delivery count unchanged) until the batch's deadline
  `clamp(deadline_factor * audio_s / speed, floor, cap)` (speed: this worker's measured
  audio seconds per busy second). A worker that dies (or hangs past that deadline) leaves
  its tasks idle; after `--claim-idle-s` another worker takes them with XAUTOCLAIM. A hung
  worker exits itself (code 70) once its deadline plus the claim delay has passed.
- Poison: a claimed task already delivered twice (each delivery lost its worker) runs
  alone; one delivered more than `--poison-cap` times goes to `earshot:{model}:dead` with
  its error, and its gateway gets an error result for that row.
- Heartbeat: hash `earshot:worker:{id}` (id, host, pid, model, device, provider, batch,
  speed, started) refreshed every `--heartbeat-s`, expiring after 3 heartbeats: the
  gateway counts live workers from these.
- A gateway's local worker (`--workers N`: started with `--gateway-pid`, the gateway's pid)
  stops as on SIGTERM once it is no longer that process's child (checked every heartbeat),
  so a SIGKILLed gateway leaves none behind.
- Exit codes: 0 on SIGTERM/SIGINT (finishes its batch first), 2 for bad arguments or an
  unreachable/refusing Redis (wrong password: said at once), 1 when the engine cannot
  load, 3 when Redis goes away while serving (a supervisor such as systemd restarts it).
Fault injection for tests: EARSHOT_WORKER_FAULT as in worker_main.py.
Single-threaded decoding; the heartbeat thread only talks to Redis (its own connection).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections import deque
from urllib.parse import urlsplit

import numpy as np

from edge_server.queue import streams as S

log = logging.getLogger("earshot.worker")

SPEED_WINDOW = 50
PRUNE_EVERY_S = 60.0  # how often a worker looks for consumers of workers that are gone
MIN_MEASURED = 3


class RemoteWorker:
    """One engine serving one model's task streams. Call `serve()` from the main thread."""

    def __init__(self, client, url: str, engine, model: str, args: argparse.Namespace) -> None:
        self.r = client
        self.url = url
        self.engine = engine
        self.model = model
        self.args = args
        self.id = args.id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"
        self.streams = [S.task_stream(model, True), S.task_stream(model, False)]
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._inflight: dict[str, list[bytes]] = {}
        self._deadline_at = 0.0
        self._measured: deque[tuple[float, float]] = deque(maxlen=SPEED_WINDOW)
        self._last_claim = 0.0
        self._last_prune = 0.0
        self.started = time.time()
        from edge_server.worker_main import _fault

        self.fault = _fault()

    # ---- setup / heartbeat ----------------------------------------------------------
    def ensure_groups(self) -> None:
        import redis

        for stream in self.streams:
            try:
                self.r.xgroup_create(stream, S.GROUP, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def speed(self) -> float | None:
        if len(self._measured) < MIN_MEASURED:
            return None
        busy = sum(b for _, b in self._measured)
        return sum(a for a, _ in self._measured) / busy if busy > 0 else None

    def deadline(self, audio_s: float) -> float:
        a = self.args
        speed = self.speed()
        if speed is None:
            return a.deadline_cap_s
        return min(a.deadline_cap_s, max(a.deadline_floor_s, a.deadline_factor * audio_s / speed))

    def heartbeat_info(self) -> dict[str, str]:
        speed = self.speed()
        return {"id": self.id, "host": socket.gethostname(), "pid": str(os.getpid()),
                "model": self.model, "device": str(getattr(self.engine, "device", "")),
                "provider": str(getattr(self.engine, "provider", "")),
                "batch": str(self.args.batch), "speed": f"{speed:.3f}" if speed else "",
                "started": f"{self.started:.0f}"}

    def _heartbeat_loop(self, client) -> None:
        key = S.worker_key(self.id)
        ttl_ms = int(self.args.heartbeat_s * 3000)
        while not self.stop.is_set():
            if self.args.gateway_pid and os.getppid() != self.args.gateway_pid:
                log.warning("worker %s: the gateway that started it is gone; stopping", self.id)
                self.stop.set()  # (a gateway restarted after SIGKILL starts its own)
                break
            try:
                client.pipeline().hset(key, mapping=self.heartbeat_info()).pexpire(
                    key, ttl_ms).execute()
                with self._lock:
                    inflight = {s: list(ids) for s, ids in self._inflight.items()}
                    deadline_at = self._deadline_at
                now = time.monotonic()
                if inflight and now < deadline_at:
                    for stream, ids in inflight.items():
                        client.xclaim(stream, S.GROUP, self.id, 0, ids, justid=True)
                elif inflight and now > deadline_at + self.args.claim_idle_s:
                    log.error("worker %s: a batch ran past its deadline (hung engine); exiting "
                              "so that its tasks are claimed by other workers", self.id)
                    os._exit(70)
            except Exception as exc:  # Redis away: the main loop notices and exits
                log.warning("heartbeat failed: %s", exc)
            self.stop.wait(self.args.heartbeat_s)
        with contextlib.suppress(Exception):
            client.delete(key)

    # ---- main loop --------------------------------------------------------------------
    def serve(self, heartbeat_client) -> int:
        self.ensure_groups()
        thread = threading.Thread(target=self._heartbeat_loop, args=(heartbeat_client,),
                                  name="heartbeat", daemon=True)
        thread.start()
        import redis

        try:
            while not self.stop.is_set():
                if time.monotonic() - self._last_prune >= min(PRUNE_EVERY_S,
                                                               self.args.prune_after_s):
                    self._last_prune = time.monotonic()
                    self._prune_consumers()
                if time.monotonic() - self._last_claim >= self.args.claim_check_s:
                    self._last_claim = time.monotonic()
                    if self._claim():
                        continue
                got = self._read()
                for stream, entries in got:
                    for i in range(0, len(entries), self.args.batch):
                        self._decode(stream, entries[i:i + self.args.batch])
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            print(f"earshot-worker: error: lost Redis at {S.redact(self.url)}: {exc}",
                  file=sys.stderr, flush=True)
            self.stop.set()
            return 3
        finally:
            self.stop.set()
            thread.join(self.args.heartbeat_s + 2)
        return 0

    def _read(self) -> list[tuple[str, list]]:
        """Finals first; partials with what is left of the batch; else block on both."""
        n = self.args.batch
        out: list[tuple[str, list]] = []
        finals = self.r.xreadgroup(S.GROUP, self.id, {self.streams[0]: ">"}, count=n)
        for stream, entries in finals or ():
            out.append((stream.decode() if isinstance(stream, bytes) else stream, entries))
        taken = sum(len(e) for _, e in out)
        if taken < n:
            partials = self.r.xreadgroup(S.GROUP, self.id, {self.streams[1]: ">"},
                                         count=n - taken)
            for stream, entries in partials or ():
                out.append((stream.decode() if isinstance(stream, bytes) else stream, entries))
        if out:
            return out
        block = int(self.args.block_ms)
        both = self.r.xreadgroup(S.GROUP, self.id, {s: ">" for s in self.streams}, count=n,
                                 block=block)
        got = [(s.decode() if isinstance(s, bytes) else s, e) for s, e in both or ()]
        got.sort(key=lambda se: se[0] != self.streams[0])  # finals first
        return got

    def _claim(self) -> bool:
        """XAUTOCLAIM tasks idle past --claim-idle-s (their worker died or hung); decode them
        alone, or dead-letter those delivered more than the poison cap. True if any."""
        idle_ms = int(self.args.claim_idle_s * 1000)
        found = False
        for stream in self.streams:
            reply = self.r.xautoclaim(stream, S.GROUP, self.id, idle_ms, "0-0",
                                      count=self.args.batch)
            claimed = [(eid, fields) for eid, fields in reply[1] if fields]
            for eid, fields in claimed:
                found = True
                pending = self.r.xpending_range(stream, S.GROUP, min=eid, max=eid, count=1)
                deliveries = pending[0]["times_delivered"] if pending else 1
                queued = time.time() - float(S.text_field(fields, "t", "0") or 0)
                log.warning("worker %s claimed task %s of %s (delivery %d, queued %.2fs ago)",
                            self.id, eid.decode() if isinstance(eid, bytes) else eid, stream,
                            deliveries, queued)
                if deliveries > self.args.poison_cap:
                    self._dead_letter(stream, eid, fields, deliveries)
                else:
                    self._decode(stream, [(eid, fields)])  # alone: it may be the poison
        return found

    def _prune_consumers(self) -> int:
        """Delete the group's consumers left by workers that are gone: no heartbeat key, no
        pending task, idle past --prune-after-s (each start of a worker adds a consumer under
        a new id, so restarts would otherwise pile them up). Never touches a consumer that
        holds a task (its tasks are claimed first). Returns how many were deleted."""
        deleted = 0
        idle_ms = int(self.args.prune_after_s * 1000)
        for stream in self.streams:
            for consumer in self.r.xinfo_consumers(stream, S.GROUP):
                name = consumer["name"]
                name = name.decode() if isinstance(name, bytes) else str(name)
                if (name == self.id or consumer["pending"] or consumer["idle"] < idle_ms
                        or self.r.exists(S.worker_key(name))):
                    continue
                self.r.xgroup_delconsumer(stream, S.GROUP, name)
                deleted += 1
                log.info("worker %s removed the stale consumer %s of %s", self.id, name, stream)
        return deleted

    def _dead_letter(self, stream: str, eid, fields: dict, deliveries: int) -> None:
        from edge_server.scheduler import CRASHED_TWICE

        error = f"{CRASHED_TWICE} (dead-lettered after {deliveries - 1} deliveries)"
        gw = S.text_field(fields, "gw", "")
        rid = S.text_field(fields, "rid", "")
        letter = {k: v for k, v in fields.items()}
        letter.update({"error": error, "deliveries": str(deliveries), "worker": self.id,
                       "stream": stream})
        pipe = self.r.pipeline()
        pipe.xadd(S.dead_stream(self.model), letter, maxlen=1000, approximate=True)
        if gw and rid:
            pipe.xadd(S.result_stream(gw), S.encode_result(rid, self.id, error=error),
                      maxlen=100_000, approximate=True, nomkstream=True)  # streams.py: TTL
        pipe.xack(stream, S.GROUP, eid).xdel(stream, eid).execute()
        log.error("task %s of %s dead-lettered: %s", rid, gw, error)

    def _decode(self, stream: str, entries: list) -> None:
        rows: list[tuple[bytes, dict, np.ndarray | None, str | None]] = []
        for eid, fields in entries:
            try:
                audio = S.decode_audio(fields)
                S.decode_ids(fields, "pfx")  # a bad prefix fails its row alone
                rows.append((eid, fields, audio, None))
            except (S.BadTask, ValueError) as exc:
                rows.append((eid, fields, None, f"bad task: {exc}"))
        good = [r for r in rows if r[2] is not None]
        audio_s = sum(len(r[2]) for r in good) / S.SAMPLE_RATE
        with self._lock:
            self._inflight = {stream: [r[0] for r in rows]}
            self._deadline_at = time.monotonic() + self.deadline(audio_s)
        texts: dict[bytes, tuple[str | None, str | None]] = {
            r[0]: (None, r[3]) for r in rows if r[2] is None}
        busy = 0.0
        tokens: dict[bytes, tuple[int, ...]] = {}
        if good:
            audios = [r[2] for r in good]
            started = time.perf_counter()
            try:
                self._inject_fault(audios)
                out = self.engine.decode_batch(audios, [S.decode_ids(r[1], "pfx") for r in good])
                busy = time.perf_counter() - started
                texts.update({r[0]: (t.text, None) for r, t in zip(good, out, strict=True)})
                tokens.update({r[0]: t.tokens for r, t in zip(good, out, strict=True)})
                self._measured.append((audio_s, busy))
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                if len(good) > 1:  # find the row to blame: each alone
                    for r in good:
                        self._decode(stream, [(r[0], r[1])])
                    return
                texts[good[0][0]] = (None, error)
        pipe = self.r.pipeline()
        asked: list[str] = []  # the gateway of each result added, in order
        for eid, fields, audio, _ in rows:
            gw, rid = S.text_field(fields, "gw", ""), S.text_field(fields, "rid", "")
            text, error = texts[eid]
            share = busy * len(audio) / S.SAMPLE_RATE / audio_s if audio is not None and \
                audio_s > 0 else 0.0
            if gw and rid:
                pipe.xadd(S.result_stream(gw), S.encode_result(rid, self.id, text, error, share,
                                                               tokens.get(eid, ())),
                          maxlen=100_000, approximate=True, nomkstream=True)  # streams.py
                asked.append(gw)
        ids = [r[0] for r in rows]
        replies = pipe.xack(stream, S.GROUP, *ids).xdel(stream, *ids).execute()  # after results
        gone = sorted({gw for gw, reply in zip(asked, replies, strict=False) if reply is None})
        if gone:  # NOMKSTREAM added nothing: that gateway's result stream expired (it died)
            log.info("worker %s: gateway(s) %s gone; their results dropped", self.id,
                     ", ".join(gone))
        with self._lock:
            self._inflight = {}

    def _inject_fault(self, audios: list[np.ndarray]) -> None:
        """EARSHOT_WORKER_FAULT (tests): crash, hang, or raise for a batch holding a loud
        sample."""
        if self.fault is None:
            return
        mode, threshold = self.fault
        if not any(len(a) and float(np.abs(a).max()) >= threshold for a in audios):
            return
        if mode == "crash":
            os._exit(77)
        while mode == "hang":
            time.sleep(0.5)
        raise ValueError("injected engine fault (EARSHOT_WORKER_FAULT)")


def build_parser() -> argparse.ArgumentParser:
    from edge_server.cli import DEVICES

    p = argparse.ArgumentParser(prog="earshot-worker", description=__doc__.split("\n")[0])
    p.add_argument("--queue", metavar="URL", default=os.environ.get("EARSHOT_QUEUE"),
                   help="Redis URL: redis://[:PASSWORD@]HOST:PORT/DB (rediss:// for TLS; "
                   "add ?ssl_ca_certs=/path/ca.pem for a private CA; default: "
                   "$EARSHOT_QUEUE, which keeps the password off the command line)")
    p.add_argument("--model", help="catalog model id to serve (default: the catalog default; "
                   "it must be one the gateway serves)")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--threads", type=int, help="onnxruntime threads")
    p.add_argument("--batch", type=int, default=8, help="most tasks decoded at once (8)")
    p.add_argument("--id", help="worker id (default: host-pid-random)")
    p.add_argument("--heartbeat-s", type=float, default=2.0,
                   help="heartbeat period; the worker counts as gone after 3 missed (2)")
    p.add_argument("--claim-idle-s", type=float, default=3.0,
                   help="a task idle this long past its worker's deadline is claimed (3)")
    p.add_argument("--prune-after-s", type=float, default=600.0,
                   help="delete consumers of workers gone (no heartbeat, no pending task) "
                        "idle this long (default 600)")
    p.add_argument("--claim-check-s", type=float, default=1.0,
                   help="how often to look for such tasks (1)")
    p.add_argument("--poison-cap", type=int, default=2,
                   help="deliveries that lost their worker before a task is dead-lettered (2)")
    p.add_argument("--deadline-floor-s", type=float, default=5.0)
    p.add_argument("--deadline-cap-s", type=float, default=20.0)
    p.add_argument("--deadline-factor", type=float, default=4.0)
    p.add_argument("--block-ms", type=float, default=500.0, help=argparse.SUPPRESS)
    p.add_argument("--gateway-pid", type=int, help=argparse.SUPPRESS)  # its local worker
    p.add_argument("--noop-engine", action="store_true",
                   help="no inference (measures the queue's own overhead)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def connect(url: str):
    """A sync client that has answered PING; ValueError saying why not (auth, refused)."""
    import redis

    S.check_url(url)
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=5, health_check_interval=30)
        client.ping()
        check_access(client)
    except redis.exceptions.NoPermissionError as exc:  # an ACL user lacking a key or command
        user = urlsplit(url).username or "default"
        raise ValueError(f"Redis at {S.redact(url)}: user '{user}' lacks a permission Earshot "
                         f"needs ({exc}); grant the ACL of docs/scale-out.md, \"ACL user\"") \
            from None
    except redis.AuthenticationError as exc:
        what = "refused the password" if urlsplit(url).password else "needs a password"
        raise ValueError(f"Redis at {S.redact(url)} {what}: {exc}") from None
    except redis.ResponseError as exc:
        if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
            raise ValueError(f"Redis at {S.redact(url)} needs a password: {exc}") from None
        raise ValueError(f"Redis at {S.redact(url)}: {exc}") from None
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        raise ValueError(f"cannot reach Redis at {S.redact(url)}: {exc}") from None
    return client


def check_access(client) -> None:
    """Send each of `S.COMMANDS` once, on scratch keys `earshot:probe:*` (deleted after, with
    a 60 s TTL meanwhile), so that an ACL user lacking one fails at start with
    redis.NoPermissionError naming it, not later mid-stream. Raises what Redis raised."""
    import redis

    key = S.probe_key(uuid.uuid4().hex[:12])
    stream, beat, group = f"{key}:tasks", f"{key}:beat", "probe"
    try:
        client.hset(beat, mapping={"probe": "1"})
        client.pexpire(beat, 60_000)
        client.hgetall(beat)
        try:  # MULTI/EXEC: a refused one surfaces as a plain error of the transaction
            client.pipeline().hgetall(beat).pexpire(beat, 60_000).execute()
        except redis.ResponseError as exc:
            if "NOPERM" not in str(exc) and "without MULTI" not in str(exc):
                raise
            raise redis.exceptions.NoPermissionError(
                f"transactions (MULTI, EXEC) refused: {exc}") from None
        eid = client.xadd(stream, {"probe": "1"}, maxlen=10, approximate=True)
        client.pexpire(stream, 60_000)
        client.xadd(stream, {"probe": "2"}, maxlen=10, approximate=True, nomkstream=True)
        client.xgroup_create(stream, group, id="0", mkstream=True)
        client.xreadgroup(group, "probe", {stream: ">"}, count=1)
        client.xpending_range(stream, group, min="-", max="+", count=1)
        client.xclaim(stream, group, "probe", 0, [eid], justid=True)
        client.xautoclaim(stream, group, "probe", 0, "0-0", count=1)
        client.xlen(stream)
        client.xrange(stream, count=1)
        client.xack(stream, group, eid)
        client.xdel(stream, eid)
        client.scan(0, match=S.WORKER_PATTERN, count=10)
        client.exists(beat)
        client.xinfo_consumers(stream, group)
        client.xgroup_delconsumer(stream, group, "probe")
    except BaseException:
        with contextlib.suppress(Exception):  # (the TTL clears them if DEL is refused too)
            client.delete(stream, beat)
        raise
    client.delete(stream, beat)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.queue:
        print("earshot-worker: error: --queue URL (or EARSHOT_QUEUE) is required",
              file=sys.stderr)
        return 2
    if args.batch < 1:
        print("earshot-worker: error: --batch must be at least 1", file=sys.stderr)
        return 2
    if args.claim_idle_s <= args.heartbeat_s:  # else live workers' tasks would be claimed
        print("earshot-worker: error: --claim-idle-s must be longer than --heartbeat-s",
              file=sys.stderr)
        return 2
    try:
        client = connect(args.queue)
        heartbeat_client = connect(args.queue)
    except ValueError as exc:
        print(f"earshot-worker: error: {exc}", file=sys.stderr, flush=True)
        return 2
    from edge_server.worker_main import _load

    try:
        models = (args.model,) if args.model else ()
        engines = _load(models, args.device, args.threads, args.noop_engine)
    except Exception as exc:
        print(f"earshot-worker: error: cannot load the engine: {type(exc).__name__}: {exc}",
              file=sys.stderr, flush=True)
        return 1
    model, engine = next(iter(engines.items()))
    worker = RemoteWorker(client, args.queue, engine, model, args)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop.set())
    signal.signal(signal.SIGINT, lambda *_: worker.stop.set())
    print(f"earshot-worker ready: id {worker.id} model {model} device "
          f"{getattr(engine, 'device', '?')} batch {args.batch} queue {S.redact(args.queue)}",
          flush=True)
    return worker.serve(heartbeat_client)


if __name__ == "__main__":
    sys.exit(main())
