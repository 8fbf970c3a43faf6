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
    fingerprint: str = ""  # SHA-256 of the certificate it serves ("" for plain http)
    cert_path: str = ""  # the certificate it serves

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
        return stop_process(self.proc, sig, timeout)


def wait_until(check, timeout: float, poll_s: float = 0.1):
    """Call `check` until it returns something truthy or `timeout` passes; its last value."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(poll_s)
    return check()


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
    """Signal a process, wait for it (kill it after `timeout`), return its exit code."""
    from loadtest.local_server import stop_process as stop

    return stop(proc, sig, timeout)


def pinned_context(cert_path: str) -> ssl.SSLContext:
    """Trust exactly this self-signed certificate, whatever address it is reached on."""
    context = ssl.create_default_context(cafile=cert_path)
    context.check_hostname = False
    return context


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
    url = cert = None
    assert proc.stdout is not None
    while cert is None:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("server exited: " + "".join(log))
        log.append(line)
        if m := re.search(r"listening on (https?://\S+)", line):
            url = m.group(1)
        if m := re.search(r"identity \S+ fingerprint (\S+) certificate (\S+)", line):
            fingerprint, cert = m.group(1).strip("-"), m.group(2)
    if url.startswith("https") and ssl_context is None and cert != "-":
        ssl_context = pinned_context(cert)  # the server's own self-signed identity
    import threading

    threading.Thread(target=lambda: [log.append(ln) for ln in proc.stdout], daemon=True).start()
    server = ServerProcess(proc, url, log, ssl_context, fingerprint, cert.strip("-"))
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
