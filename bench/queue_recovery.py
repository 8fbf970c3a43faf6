"""SIGKILL `earshot-worker`s under load and time how long the tasks they held take to be
finished by another worker, from Redis's own record (the consumer group's pending list).

`Killer(workers, redis_client, streams, every_s)` runs in a daemon thread: every
`every_s` seconds (the first `every_s` after start) it SIGKILLs one worker; only while
another worker is ready (so one is always left to claim), preferring the worker holding
the most pending tasks (ties: the slot not killed last). Right after the kill it reads the
killed consumer's pending entries (XPENDING ... consumer: the tasks it held; Redis keeps
them until another worker XAUTOCLAIMs and then XACKs them, worker_cli.py) and polls them
every `poll_s`:
- `claimed_s`: kill -> the last of them moved to another consumer (claimed);
- `recovered_s`: kill -> the last of them left the pending list (decoded, result
  written and acknowledged in one MULTI: worker_cli.py `_decode`).
A kill that found no pending task (the worker was between batches) has neither.
Polling stops `track_timeout_s` after the kill (then `recovered_s` is None and
`unrecovered` lists the ids). `stop()` ends the kills and waits for the tracking.
"""

from __future__ import annotations

import threading
import time

from bench.queue_stack import Workers

GROUP = "workers"  # edge_server.queue.streams.GROUP


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class Killer:
    def __init__(self, workers: Workers, client, streams: list[str], every_s: float,
                 poll_s: float = 0.02, track_timeout_s: float = 60.0) -> None:
        self.workers = workers
        self.r = client
        self.streams = streams
        self.every_s = every_s
        self.poll_s = poll_s
        self.track_timeout_s = track_timeout_s
        self.kills: list[dict] = []
        self._stop = threading.Event()
        self._last: int | None = None
        self._trackers: list[threading.Thread] = []
        self._thread = threading.Thread(target=self._loop, name="bench-killer", daemon=True)

    def start(self) -> Killer:
        self._thread.start()
        return self

    def stop(self) -> list[dict]:
        self._stop.set()
        self._thread.join(30)
        for t in self._trackers:
            t.join(self.track_timeout_s + 5)
        return self.kills

    # ---- choosing and killing -----------------------------------------------------------
    def _pending_by_consumer(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for stream in self.streams:
            info = self.r.xpending(stream, GROUP)
            for c in info.get("consumers") or []:
                name = _text(c["name"])
                counts[name] = counts.get(name, 0) + int(c["pending"])
        return counts

    def _choose(self) -> int | None:
        ready = self.workers.ready_indices()
        if len(ready) < 2:
            return None
        pending = self._pending_by_consumer()
        return max(ready, key=lambda i: (pending.get(self.workers.slots[i].worker_id, 0),
                                         i != self._last))

    def _loop(self) -> None:
        due = time.monotonic() + self.every_s
        while not self._stop.wait(max(0.0, due - time.monotonic())):
            index = self._choose()
            if index is None:  # the other worker is still starting: kill once it is ready
                due = time.monotonic() + 0.1
                continue
            self._kill(index)
            due = time.monotonic() + self.every_s

    def _kill(self, index: int) -> None:
        at = time.monotonic()
        wid, pid = self.workers.kill(index)
        self._last = index
        held: list[tuple[str, str]] = []
        for stream in self.streams:
            for p in self.r.xpending_range(stream, GROUP, min="-", max="+", count=1000,
                                           consumername=wid):
                held.append((stream, _text(p["message_id"])))
        kill = {"at": at, "slot": index, "worker": wid, "pid": pid, "held": len(held),
                "held_finals": sum(s.endswith(":finals") for s, _ in held),
                "claimed_s": None, "recovered_s": None, "unrecovered": []}
        self.kills.append(kill)
        if held:
            t = threading.Thread(target=self._track, args=(kill, wid, held), daemon=True,
                                 name="bench-recovery")
            self._trackers.append(t)
            t.start()

    # ---- tracking -----------------------------------------------------------------------
    def _track(self, kill: dict, wid: str, held: list[tuple[str, str]]) -> None:
        at = kill["at"]
        claimed: dict[str, float] = {}
        left = {eid: stream for stream, eid in held}
        done_at = at
        while left and time.monotonic() - at < self.track_timeout_s:
            pipe = self.r.pipeline(transaction=False)
            order = list(left.items())
            for eid, stream in order:
                pipe.xpending_range(stream, GROUP, min=eid, max=eid, count=1)
            replies = pipe.execute()
            now = time.monotonic()
            for (eid, _), reply in zip(order, replies, strict=True):
                if not reply:
                    claimed.setdefault(eid, now)
                    del left[eid]
                    done_at = now
                elif _text(reply[0]["consumer"]) != wid:
                    claimed.setdefault(eid, now)
            if left:
                time.sleep(self.poll_s)
        if claimed:
            kill["claimed_s"] = round(max(claimed.values()) - at, 3)
        if left:
            kill["unrecovered"] = sorted(left)
        else:
            kill["recovered_s"] = round(done_at - at, 3)
