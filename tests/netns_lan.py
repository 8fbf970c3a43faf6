"""A small LAN of network namespaces for tests about two (or more) hosts.

A "switch" namespace holds a Linux bridge; each host is a namespace joined to it by a veth
pair, with an address in 10.232.N.0/24, its loopback up, and no route anywhere else. mDNS
multicast flows between the hosts and never reaches this machine's real interfaces, so
processes inside may run on their default settings (every interface). Needs root and
iproute2 (`python3 dev.py test` installs it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.server_harness import stop_process

BIN = Path(sys.executable).parent  # the installed commands (earshot, earshot-server)


def _sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


def available() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None


def default_env(**extra: str) -> dict[str, str]:
    """This environment without the test suite's mDNS pin: what a user's shell has."""
    env = {k: v for k, v in os.environ.items() if k != "EARSHOT_MDNS_INTERFACES"}
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


@dataclass
class Host:
    ns: str
    ip: str

    def command(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *args]

    def run(self, *args: str, env: dict | None = None, timeout: float = 120,
            input: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(*args), capture_output=True, text=True,
                              timeout=timeout, env=env or default_env(), input=input)

    def python(self, *args: str, env: dict | None = None,
               timeout: float = 120) -> subprocess.CompletedProcess:
        return self.run(sys.executable, *args, env=env, timeout=timeout)


@dataclass
class Process:
    """A long-running process in a namespace, its output collected by a thread."""

    proc: subprocess.Popen
    log: list[str] = field(default_factory=list)

    def wait_for(self, text: str, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.log):
                if text in line:
                    return line
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no {text!r} in output:\n" + "".join(self.log))

    def stop(self, timeout: float = 60) -> int:
        return stop_process(self.proc, timeout=timeout)


class NetnsLan:
    def __init__(self) -> None:
        self.tag = f"{os.getpid() % 100000}"
        self.subnet = f"10.232.{10 + os.getpid() % 200}"
        self.switch = f"esw{self.tag}"
        self.hosts: list[Host] = []
        self._links: list[str] = []
        _sh("ip", "netns", "add", self.switch)
        _sh("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge",
            "mcast_snooping", "0")
        _sh("ip", "-n", self.switch, "link", "set", "br0", "up")

    def add_host(self, name: str) -> Host:
        index = len(self.hosts) + 1
        ns = f"e{name}{self.tag}"
        host_if, switch_if = f"eh{self.tag}x{index}", f"es{self.tag}x{index}"
        ip = f"{self.subnet}.{index}"
        _sh("ip", "netns", "add", ns)
        _sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", switch_if)
        self._links.append(host_if)
        _sh("ip", "link", "set", host_if, "netns", ns)
        _sh("ip", "link", "set", switch_if, "netns", self.switch)
        _sh("ip", "-n", self.switch, "link", "set", switch_if, "master", "br0", "up")
        _sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", host_if)
        _sh("ip", "-n", ns, "link", "set", host_if, "up", "multicast", "on")
        _sh("ip", "-n", ns, "link", "set", "lo", "up")
        host = Host(ns, ip)
        self.hosts.append(host)
        return host

    def start(self, host: Host, *args: str, env: dict | None = None) -> Process:
        proc = subprocess.Popen(host.command(*args), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True,
                                env=env or default_env())
        process = Process(proc)
        assert proc.stdout is not None
        stdout = proc.stdout
        threading.Thread(target=lambda: [process.log.append(ln) for ln in stdout],
                         daemon=True).start()
        return process

    def close(self) -> None:
        for host in self.hosts:
            subprocess.run(["ip", "netns", "pids", host.ns], capture_output=True)
            with contextlib.suppress(OSError):
                subprocess.run(["ip", "netns", "del", host.ns], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.switch], capture_output=True)
        for link in self._links:  # gone with their namespace; this is a safety net
            subprocess.run(["ip", "link", "del", link], capture_output=True)
