"""Paired servers: each one's persistent id pinned to its TLS certificate's SHA-256 fingerprint.

`PinStore` keeps `PairedServer` records in a JSON file (default
`config_dir() / "paired-servers.json"`): `{"version": 1, "servers": [{...}, ...]}`, mode 0600,
written atomically. A corrupt file is logged and read as empty (the user pairs again), and a
malformed record in it is logged and skipped; neither raises. Tokens are not kept here (see
`desktop.lan.credentials`).

Fingerprints are stored as 64 lowercase hex digits. `normalise_fingerprint` accepts what a
person may paste ("AB:CD:..", "ab cd ..", "SHA256:AB:CD..", openssl's
"SHA256 Fingerprint=AB:CD:..", OpenSSH's "SHA256:<base64>") and `format_fingerprint` gives
the form to show ("AB:CD:...").

Threads: one store may be shared by the GUI thread and the app's asyncio thread. Writes hold a
lock around their read-modify-write; every read re-reads the file (it is tiny), so a server
paired by another process (`earshot pair` on the command line) is seen at once. Two processes
writing at the same instant may lose one update (last writer wins); neither ever sees a
half-written file. No Qt here: the CLI uses this module too.
"""

from __future__ import annotations

import base64
import logging
import re
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from desktop.lan.config_dir import config_dir, read_private_json, write_private_json

log = logging.getLogger(__name__)

FILE_VERSION = 1
_HEX64 = re.compile(r"[0-9a-f]{64}")
_PREFIX = re.compile(r"^sha-?256(?:\s*fingerprint)?\s*[:=]?\s*", re.IGNORECASE)
_HEXISH = re.compile(r"[0-9a-fA-F]+=?")  # a truncated hex fingerprint, not OpenSSH base64
_SEPARATORS = re.compile(r"[\s:]+")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalise_fingerprint(text: str) -> str:
    """A SHA-256 fingerprint as 64 lowercase hex digits.

    Accepts hex with or without ':' or whitespace between bytes, in either case, optionally
    after "SHA256:", "SHA-256 " or "SHA256 Fingerprint=" (openssl); also "SHA256:" followed
    by base64 (OpenSSH). Raises ValueError saying what is wrong with anything else."""
    if not isinstance(text, str):
        raise ValueError(f"a fingerprint must be text, not {type(text).__name__}")
    stripped = text.strip()
    body = _PREFIX.sub("", stripped, count=1)
    had_prefix = body != stripped
    digits = _SEPARATORS.sub("", body).lower()
    if _HEX64.fullmatch(digits):
        return digits
    if had_prefix and re.fullmatch(r"[A-Za-z0-9+/]{43}=?", body) and not _HEXISH.fullmatch(body):
        raw = base64.b64decode(body.rstrip("=") + "=")
        return raw.hex()
    if not digits:
        raise ValueError(f"not a SHA-256 fingerprint: {text!r} is empty")
    bad = sorted({c for c in digits if c not in "0123456789abcdef"})
    if bad:
        raise ValueError(f"not a SHA-256 fingerprint: {text!r} has characters that are not hex "
                         f"digits ({' '.join(bad)})")
    raise ValueError(f"not a SHA-256 fingerprint: {text!r} has {len(digits)} hex digits, "
                     "expected 64 (32 bytes)")


def format_fingerprint(fingerprint: str) -> str:
    """The fingerprint as uppercase colon-separated pairs, "AB:CD:...", for people to compare.

    Accepts any form `normalise_fingerprint` does (ValueError otherwise)."""
    hexdigits = normalise_fingerprint(fingerprint).upper()
    return ":".join(hexdigits[i:i + 2] for i in range(0, len(hexdigits), 2))


def _url_key(url: str) -> tuple[str, int, str] | None:
    """(host, port, path) for comparing server URLs: scheme-less, default ports filled in,
    host lowercased, trailing slash dropped; None for something that is not a URL."""
    text = url.strip()
    if not text:
        return None
    if "://" not in text:
        text = "http://" + text
    try:
        parts = urlsplit(text)
        host = (parts.hostname or "").rstrip(".")
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme.lower())
    except ValueError:  # a port that is not a number or out of range
        return None
    if not host or port is None:
        return None
    return host, port, parts.path.rstrip("/")


@dataclass(frozen=True)
class PairedServer:
    """A server the user paired with. `fingerprint` is normalised on construction (any form
    `normalise_fingerprint` accepts; ValueError otherwise); `paired_at` is a Unix time."""

    server_id: str
    fingerprint: str
    name: str
    url: str
    paired_at: float

    def __post_init__(self) -> None:
        if not isinstance(self.server_id, str) or not self.server_id:
            raise ValueError(f"server_id must be a non-empty string, not {self.server_id!r}")
        object.__setattr__(self, "fingerprint", normalise_fingerprint(self.fingerprint))
        object.__setattr__(self, "paired_at", float(self.paired_at))

    @classmethod
    def from_json(cls, data: Any) -> PairedServer:
        """A record as written by `PinStore`; ValueError/TypeError/KeyError if malformed."""
        if not isinstance(data, dict):
            raise TypeError(f"expected an object, got {type(data).__name__}")
        return cls(server_id=data["server_id"], fingerprint=data["fingerprint"],
                   name=str(data.get("name", "")), url=str(data.get("url", "")),
                   paired_at=float(data.get("paired_at", 0.0)))


class PinStore:
    """Paired servers by id, in a private JSON file. See the module docstring for the thread
    rules. Methods that take a fingerprint accept any form `normalise_fingerprint` does."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path) if path is not None else config_dir() / "paired-servers.json"
        self._lock = threading.Lock()

    def all(self) -> list[PairedServer]:
        """Every paired server, oldest pairing first."""
        return sorted(self._read().values(), key=lambda s: (s.paired_at, s.server_id))

    def get(self, server_id: str) -> PairedServer | None:
        return self._read().get(server_id)

    def add(self, server: PairedServer) -> None:
        """Pin `server`, replacing any earlier pairing with the same id. OSError if the file
        cannot be written."""
        if not isinstance(server, PairedServer):
            raise TypeError(f"expected a PairedServer, got {type(server).__name__}")
        with self._lock:
            servers = self._read()
            servers[server.server_id] = server
            self._write(servers)

    def remove(self, server_id: str) -> None:
        """Forget the pairing with `server_id`; missing is fine. OSError if the file cannot
        be written."""
        with self._lock:
            servers = self._read()
            if servers.pop(server_id, None) is not None:
                self._write(servers)

    def find_by_url(self, url: str) -> PairedServer | None:
        """The paired server at `url` (latest pairing if several), comparing host, port and
        path: the scheme and a trailing slash are ignored, so http:// and https:// of the same
        host:port match; a URL without a port gets its scheme's default one."""
        key = _url_key(url)
        if key is None:
            return None
        matches = [s for s in self.all() if _url_key(s.url) == key]
        return matches[-1] if matches else None

    def by_fingerprint(self, fingerprint: str) -> PairedServer | None:
        """The paired server pinned to this certificate (latest pairing if several).

        ValueError if `fingerprint` is not a SHA-256 fingerprint."""
        wanted = normalise_fingerprint(fingerprint)
        matches = [s for s in self.all() if s.fingerprint == wanted]
        return matches[-1] if matches else None

    def _read(self) -> dict[str, PairedServer]:
        data = read_private_json(self.path)
        records = data.get("servers", [])
        if not isinstance(records, list):
            log.warning("%s is corrupt ('servers' is not a list): treating it as empty",
                        self.path)
            return {}
        servers: dict[str, PairedServer] = {}
        for record in records:
            try:
                server = PairedServer.from_json(record)
            except (ValueError, TypeError, KeyError) as e:
                log.warning("%s: skipping a malformed paired server (%s: %s)",
                            self.path, type(e).__name__, e)
                continue
            servers[server.server_id] = server
        return servers

    def _write(self, servers: dict[str, PairedServer]) -> None:
        records = [asdict(s) for s in sorted(servers.values(), key=lambda s: s.paired_at)]
        write_private_json(self.path, {"version": FILE_VERSION, "servers": records})
