"""Read a running server's /healthz from a benchmark (any thread; blocking, 5 s timeout)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request


def read_health(url: str) -> dict:
    """The server's /healthz document: also on an HTTP error status (503 while full or
    draining carries the same body); {} when the server cannot be reached."""
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=5) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return json.loads(err.read())
    except OSError:
        return {}
