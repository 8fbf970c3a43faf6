"""A real `redis-server` (Debian package redis-server) for tests, and `earshot-worker`
processes fed by it.

`RedisServer.start(password=None)` runs one on a free 127.0.0.1 port (or `host`), no
persistence (`--save '' --appendonly no`), in a temporary folder; `.url` names it (the
default user), `.url_as(user, password)` an ACL user's URL; `.stop()`.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from loadtest.local_server import stop_process


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class RedisServer:
    proc: subprocess.Popen
    host: str
    port: int
    password: str | None
    folder: str
    ca_file: str | None = None  # TLS: the CA clients trust (the URL is then rediss://)

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.ca_file:
            return f"rediss://{auth}{self.host}:{self.port}/0?ssl_ca_certs={self.ca_file}"
        return f"redis://{auth}{self.host}:{self.port}/0"

    def client(self):
        import redis

        return redis.Redis.from_url(self.url)

    def url_as(self, user: str, password: str) -> str:
        """The URL of this server for an ACL user: redis://USER:PASSWORD@host:port/0."""
        return f"redis://{user}:{password}@{self.host}:{self.port}/0"

    @classmethod
    def start(cls, password: str | None = None, host: str = "127.0.0.1",
              netns: list[str] | None = None, port: int | None = None,
              tls: bool = False) -> RedisServer:
        """`netns`: a command prefix (e.g. `ip netns exec NS`); `port`: a given one (a
        restart on the same address), else a free one; `tls`: TLS only, with a test CA
        (trustme) whose certificate names 127.0.0.1."""
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server; "
                               "python dev.py setup test installs it)")
        folder = tempfile.mkdtemp(prefix="earshot-redis-")
        port = port or free_port(host if not netns else "127.0.0.1")
        cmd = [exe, "--port", str(port), "--bind", host, "--save", "", "--appendonly", "no",
               "--dir", folder, "--protected-mode", "no"]
        if password:
            cmd += ["--requirepass", password]
        ca_file = None
        if tls:
            import trustme

            ca = trustme.CA()
            issued = ca.issue_cert(host)
            ca_file, cert, key = (os.path.join(folder, n) for n in ("ca.pem", "c.pem", "k.pem"))
            ca.cert_pem.write_to_path(ca_file)
            issued.private_key_pem.write_to_path(key)
            for i, blob in enumerate(issued.cert_chain_pems):
                blob.write_to_path(cert, append=i > 0)
            cmd[1:3] = ["--port", "0", "--tls-port", str(port), "--tls-cert-file", cert,
                        "--tls-key-file", key, "--tls-ca-cert-file", ca_file,
                        "--tls-auth-clients", "no"]
        proc = subprocess.Popen([*(netns or []), *cmd], stdout=subprocess.DEVNULL,
                                stderr=subprocess.STDOUT)
        server = cls(proc, host, port, password, folder, ca_file)
        deadline = time.monotonic() + 10
        while not server._answers(netns):
            if proc.poll() is not None or time.monotonic() > deadline:
                server.stop()
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        return server

    def _answers(self, netns: list[str] | None) -> bool:
        """It accepts connections (from inside its namespace, when it runs in one)."""
        if not netns:
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return True
            except OSError:
                return False
        probe = (f"import socket; socket.create_connection(({self.host!r}, {self.port}), "
                 "timeout=0.5)")
        return subprocess.run([*netns, sys.executable, "-c", probe],
                              capture_output=True).returncode == 0

    def stop(self) -> None:
        stop_process(self.proc, timeout_s=10)
        shutil.rmtree(self.folder, ignore_errors=True)


@dataclass
class WorkerProcess:
    proc: subprocess.Popen
    log: list[str] = field(default_factory=list)
    worker_id: str = ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(30)

    def stop(self) -> int:
        from tests.server_harness import stop_process

        return stop_process(self.proc, signal.SIGTERM, 30)


def start_worker(url: str, *args: str, env: dict | None = None, ready_timeout: float = 60,
                 prefix: list[str] | None = None) -> WorkerProcess:
    """Start `earshot-worker --queue url ...`; returns once it said it is ready."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    worker = Path(sys.executable).parent / "earshot-worker"  # the installed command
    cmd = [*(prefix or []), str(worker), "--queue", url, "--heartbeat-s", "0.5",
           "--claim-idle-s", "1.5", "--claim-check-s", "0.3", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=full_env, cwd=os.path.dirname(os.path.dirname(__file__)))
    worker = WorkerProcess(proc)
    assert proc.stdout is not None
    deadline = time.monotonic() + ready_timeout
    while True:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("earshot-worker exited: " + "".join(worker.log))
        worker.log.append(line)
        if m := re.search(r"earshot-worker ready: id (\S+)", line):
            worker.worker_id = m.group(1)
            break
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("earshot-worker never became ready: " + "".join(worker.log))
    threading.Thread(target=lambda: [worker.log.append(ln) for ln in proc.stdout],
                     daemon=True).start()
    return worker
