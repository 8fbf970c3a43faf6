"""Run a real `earshot-server` process on 127.0.0.1 for tests, and stream audio to it."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass

import numpy as np

from desktop.stream_client import Final, StreamClient


@dataclass
class ServerProcess:
    proc: subprocess.Popen
    url: str
    log: list[str]
    ssl_context: ssl.SSLContext | None = None  # for a https server with a test CA

    def health(self) -> dict:
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=5,
                                        context=self.ssl_context) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return json.loads(err.read())

    def wyoming_address(self, timeout: float = 10) -> tuple[str, int]:
        """(host, port) of the Wyoming server (started with --wyoming), from its stdout line."""
        deadline = time.monotonic() + timeout
        while True:
            for line in list(self.log):
                if m := re.search(r"wyoming on tcp://(\S+):(\d+)", line):
                    return m.group(1), int(m.group(2))
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("no wyoming line: " + "".join(self.log))
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_server(*args: str, env: dict | None = None, ready_timeout: float = 120,
                 ssl_context: ssl.SSLContext | None = None) -> ServerProcess:
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    if "--mdns-interfaces" not in args:  # never multicast beyond loopback from tests
        args = (*args, "--no-mdns")
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_server.cli", "--host", "127.0.0.1", "--port", "0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=full_env)
    log: list[str] = []
    deadline = time.monotonic() + ready_timeout
    url = None
    assert proc.stdout is not None
    while url is None:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("server exited: " + "".join(log))
        log.append(line)
        if m := re.search(r"listening on (https?://\S+)", line):
            url = m.group(1)
    import threading

    threading.Thread(target=lambda: [log.append(ln) for ln in proc.stdout], daemon=True).start()
    server = ServerProcess(proc, url, log, ssl_context)
    while server.health().get("status") != "ready":
        if time.monotonic() > deadline or proc.poll() is not None:
            server.stop(signal.SIGKILL)
            raise RuntimeError("server never became ready: " + "".join(log))
        time.sleep(0.2)
    return server


async def stream_audio(url: str, audio: np.ndarray, *, token: str | None = None,
                       realtime: bool = False, frame: int = 1600, rate: int = 16_000,
                       partials: bool = True, events: list | None = None,
                       during=None) -> tuple[list[Final], StreamClient]:
    """Stream float32 audio (at `rate`) through a StreamClient; return finals and the client.

    `during(client, sent_samples)` is awaited after every frame (to inject faults).
    """
    received = events if events is not None else []
    client = StreamClient(url, token=token, sample_rate=rate, partials=partials,
                          on_event=lambda e: received.append((time.monotonic(), e)))
    await client.connect()
    started = time.monotonic()
    for i in range(0, len(audio), frame):
        await client.send_audio(audio[i : i + frame])
        if during is not None:
            await during(client, i + frame)
        if realtime:
            delay = started + (i + frame) / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        elif i % (frame * 20) == 0:
            await asyncio.sleep(0)
    finals = await client.finish(timeout_s=120)
    return finals, client
