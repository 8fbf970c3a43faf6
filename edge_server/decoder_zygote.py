"""The decoder zygote: a small process that forks one decoding child per uploaded file.

    python -m edge_server.decoder_zygote CONTROL_FD

Started by the server (`upload_decoder.DecoderZygote`) with one end of a Unix socket pair
as CONTROL_FD. It loads PyAV once (~35 MB), then forks a child per request, so a child
starts in about a millisecond instead of paying a fresh interpreter's ~0.1 s of CPU; the
child runs `upload_decoder_child.child_main` and exits. The zygote is a fresh
interpreter, not a fork of the server: its children inherit none of the server's
threads, sockets or memory. It reads no upload itself: untrusted data only ever reaches
its children.

Requests (server -> zygote, on the socket): JSON lines. A decode request carries one file
descriptor (SCM_RIGHTS): the write end of the pipe its child writes to.
    {"op": "decode", "id": N, "path", "block_seconds", "cpu_seconds", "memory_mb",
     "max_seconds"}
    {"op": "kill", "id": N}      SIGKILL request N's child if it still runs
Events (zygote -> server, on its stdout): JSON lines.
    {"ready": true}              once, when PyAV is loaded
    {"id": N, "pid": P}          request N's child was forked
    {"id": N, "exit": C}         ... and reaped: its exit status, or minus the signal
The zygote reaps its own children, so a pid it kills is never a reused one. When the
socket closes (the server is gone) it kills its children and exits. Single-threaded:
select() on the socket and a SIGCHLD wakeup pipe. POSIX only.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import sys
import traceback

MAX_FDS = 8


class Zygote:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.children: dict[int, int] = {}  # pid -> request id, until reaped
        self.buffer = b""
        self.fds: list[int] = []  # received with requests not parsed yet, in order
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)

    def run(self) -> None:
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server decides when we stop
        self.emit({"ready": True})
        while True:
            ready, _, _ = select.select([self.sock, self.wake_r], [], [])
            if self.wake_r in ready:
                while True:
                    try:
                        if not os.read(self.wake_r, 512):
                            break
                    except BlockingIOError:
                        break
                self.reap()
            if self.sock in ready and not self.receive():
                break
        for pid in list(self.children):
            self.kill_pid(pid)

    def receive(self) -> bool:
        """Handle what arrived on the socket; False when the server is gone."""
        try:
            data, fds, _, _ = socket.recv_fds(self.sock, 1 << 16, MAX_FDS)
        except OSError:
            return False
        if not data:
            return False
        self.buffer += data
        self.fds += fds
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            try:
                request = json.loads(line)
                if request["op"] == "decode":
                    self.decode(request, self.fds.pop(0))
                elif request["op"] == "kill":
                    for pid, rid in list(self.children.items()):
                        if rid == request["id"]:
                            self.kill_pid(pid)
            except Exception:  # a bad request: say so on stderr, keep serving
                traceback.print_exc()
        return True

    def decode(self, request: dict, fd: int) -> None:
        pid = os.fork()
        if pid == 0:
            self.become_child(request, fd)
        os.close(fd)
        self.children[pid] = request["id"]
        self.emit({"id": request["id"], "pid": pid})

    def become_child(self, request: dict, fd: int) -> None:
        """In the forked child: drop the zygote's ends, decode, exit. Never returns."""
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            self.sock.close()
            for extra in (self.wake_r, self.wake_w, *self.fds):
                os.close(extra)
            null = os.open(os.devnull, os.O_RDWR)
            os.dup2(null, 0)
            os.dup2(null, 1)  # stdout is the zygote's event channel: never write to it
            os.close(null)
            from edge_server.upload_decoder_child import child_main

            child_main(request["path"], fd, float(request["block_seconds"]),
                       int(request["cpu_seconds"]), int(request["memory_mb"]),
                       float(request["max_seconds"]))
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            rid = self.children.pop(pid, None)
            if rid is not None:
                self.emit({"id": rid, "exit": os.waitstatus_to_exitcode(status)})

    def kill_pid(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    @staticmethod
    def emit(event: dict) -> None:
        data = (json.dumps(event) + "\n").encode()
        while data:
            data = data[os.write(1, data):]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    sock = socket.socket(fileno=int(argv[0]))
    import av  # noqa: F401  (every child gets it loaded)

    import edge_server.upload_decoder_child  # noqa: F401

    Zygote(sock).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
