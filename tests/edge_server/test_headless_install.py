"""A GPU box installs no Qt and no PortAudio: the server must start without them."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request

BLOCK = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split('.')[0] in ('PySide6', 'sounddevice', 'shiboken6'):
            raise ImportError(f'{name} is not installed on this box')
sys.meta_path.insert(0, Block())
sys.argv = ['earshot-server', '--port', '0', '--workers', '1', '--no-mdns']
from edge_server.cli import main
sys.exit(main())
"""


def test_server_runs_without_qt_or_portaudio():
    proc = subprocess.Popen([sys.executable, "-c", BLOCK], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline()
        assert "listening on" in line, line + proc.stdout.read()
        url = line.split("listening on ")[1].strip()
        for _ in range(600):
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=2) as resp:
                    if json.loads(resp.read())["status"] == "ready":
                        break
            except OSError:
                pass
            import time

            time.sleep(0.1)
        else:
            raise AssertionError("server never became ready")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
