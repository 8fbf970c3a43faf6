"""An `earshot-server` started for a load test (`--server local`) and stopped after it.

It runs `python -m edge_server.cli` (this interpreter, so the same install) on 127.0.0.1
port 0 without mDNS, with the given arguments and settings (`settings`: TOML keys, e.g.
{"handshake_timeout_s": 2}, merged over `config`'s file into a temporary TOML), waits
until `/healthz` says ready, and keeps its log (last 2000 lines). Plain http on the
loopback needs no token (auth "remote"). Blocking calls; use from one thread.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path


class ServerStartError(RuntimeError):
    """The local server exited or never became ready (its last log lines in the message)."""


def toml_text(data: dict) -> str:
    """A TOML document for settings: scalars, lists of scalars, one level of tables."""
    def value(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(str(v))

    lines = [f"{k} = {value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for k, table in data.items():
        if isinstance(table, dict):
            lines += ["", f"[{k}]", *(f"{kk} = {value(vv)}" for kk, vv in table.items())]
    return "\n".join(lines) + "\n"


def parse_setting(text: str) -> tuple[str, object]:
    """`KEY=VALUE` (VALUE in TOML: 2, 0.5, true, "x"; bare words are strings; `a.b=...`
    sets key b of table a) -> (key, value). ValueError when there is no `=`."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--server-setting {text!r}: expected KEY=VALUE")
    try:
        val = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        val = raw.strip()
    return key.strip(), val


class LocalServer:
    def __init__(self, args: list[str] | None = None, settings: dict | None = None,
                 config: Path | None = None, env: dict | None = None) -> None:
        self.args = list(args or [])
        self.settings = dict(settings or {})
        self.config = config
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self.log: deque[str] = deque(maxlen=2000)
        self._tmp: tempfile.TemporaryDirectory | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _config_path(self) -> Path | None:
        if not self.settings:
            return self.config
        data: dict = {}
        if self.config is not None:
            data = tomllib.loads(Path(self.config).read_text(encoding="utf-8"))
        for key, val in self.settings.items():
            if "." in key:
                table, sub = key.split(".", 1)
                data.setdefault(table, {})[sub] = val
            else:
                data[key] = val
        self._tmp = tempfile.TemporaryDirectory(prefix="earshot-loadtest-")
        path = Path(self._tmp.name) / "server.toml"
        path.write_text(toml_text(data), encoding="utf-8")
        return path

    def start(self, ready_timeout_s: float = 180.0) -> LocalServer:
        cmd = [sys.executable, "-m", "edge_server.cli", "--host", "127.0.0.1", "--port", "0",
               "--no-mdns", *self.args]
        config = self._config_path()
        if config is not None:
            cmd += ["--config", str(config)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env={**os.environ, **(self.env or {}),
                                          "PYTHONUNBUFFERED": "1"})
        assert self.proc.stdout is not None
        deadline = time.monotonic() + ready_timeout_s
        while not self.url:
            line = self.proc.stdout.readline()
            if not line:
                self.proc.wait()
                raise ServerStartError("the local earshot-server exited: "
                                       + "".join(list(self.log)[-15:]))
            self.log.append(line)
            if m := re.search(r"listening on (https?://\S+)", line):
                self.url = m.group(1)
        threading.Thread(target=self._drain, name="loadtest-server-log", daemon=True).start()
        while (status := self.health().get("status")) != "ready":
            if status == "failed" or time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop(signal.SIGKILL)
                raise ServerStartError("the local earshot-server never became ready: "
                                       + "".join(list(self.log)[-15:]))
            time.sleep(0.2)
        return self

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.log.append(line)

    def health(self) -> dict:
        """/healthz (also its 503 body); {} when it does not answer."""
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=5) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return json.loads(err.read())
        except (OSError, ValueError):
            return {}

    def worker_pids(self) -> list[int]:
        return [int(p) for p in self.health().get("worker_pids") or []]

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60.0) -> int | None:
        """Signal the server (SIGTERM: a graceful drain), wait, kill after `timeout_s`."""
        if self.proc is None:
            return None
        stop_process(self.proc, sig, timeout_s)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        return self.proc.returncode

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM,
                 timeout_s: float = 60.0) -> int:
    """Signal a process, wait for it (kill it after `timeout_s`), return its exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
