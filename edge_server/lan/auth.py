"""Who may transcribe: the server token, the loopback exemption, failed-attempt limiting.

Modes (`ServerSettings.auth`):
- `remote` (default): clients on other hosts must present the token; loopback clients
  (127.0.0.0/8, ::1) are trusted whatever they present, so local tools need no setup.
  Only a direct connection counts as loopback: a request with forwarding headers came
  through a proxy and needs the token, unless the peer is one of `trusted_proxies`, whose
  word on the client's address is taken (see `client_address`).
- `all`: every client must present the token (the desktop app's embedded server).
- `none`: no token at all (an isolated lab network; the server logs a warning).
The token is `--token` when given, else the contents of the token file (created on first
start with 32 random bytes, mode 0600; `earshot-server token --rotate` replaces it and a
running server picks the new one up within a second). Tokens are compared in constant
time. An address with `max_failures` failed attempts within `window_s` is refused for
`lockout_s` (HTTP 429 + Retry-After) before its credentials are even looked at.
Event loop thread only (no locks); the token file may be rewritten by another process.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from edge_server.lan.client_address import (
    ClientAddress,
    client_address,
    parse_networks,
    peer_ip,
)

log = logging.getLogger(__name__)
AUTH_MODES = ("remote", "all", "none")
TOKEN_FILE_ENV = "EARSHOT_SERVER_TOKEN_FILE"


def default_token_file() -> Path:
    """$EARSHOT_SERVER_TOKEN_FILE, else `<user config dir>/earshot/server-token`."""
    if os.environ.get(TOKEN_FILE_ENV):
        return Path(os.environ[TOKEN_FILE_ENV])
    return platformdirs.user_config_path("earshot") / "server-token"


def new_token() -> str:
    return secrets.token_urlsafe(32)


def write_token(path: Path, token: str) -> None:
    """Atomically replace the token file, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(token + "\n")
    os.replace(tmp, path)


def read_token(path: Path) -> str:
    token = path.read_text(encoding="utf-8").strip()
    if not token:
        raise ValueError(f"token file {path} is empty: run `earshot-server token --rotate`")
    return token


def load_or_create_token(path: Path) -> str:
    """The token stored in `path`, creating the file with a fresh token if it is missing."""
    if not path.exists():
        write_token(path, new_token())
        log.info("created a server token in %s (show it with `earshot-server token`)", path)
    return read_token(path)


def is_loopback(address: str | None) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback; False for anything unparsable."""
    ip = peer_ip(address)
    return ip is not None and ip.is_loopback


class TokenSource:
    """The current token: fixed, or read from a file that is re-checked at most every second."""

    def __init__(self, token: str | None, path: Path | None) -> None:
        self.path = None if token else path
        self._token = token or (load_or_create_token(path) if path else None)
        self._mtime = self._stat()
        self._checked = time.monotonic()

    def _stat(self) -> float | None:
        if self.path is None:
            return None
        try:
            return self.path.stat().st_mtime
        except OSError:
            return None

    def current(self) -> str | None:
        now = time.monotonic()
        if self.path is not None and now - self._checked >= 1.0:
            self._checked = now
            mtime = self._stat()
            if mtime is not None and mtime != self._mtime:
                with contextlib.suppress(OSError, ValueError):
                    self._token = read_token(self.path)
                    self._mtime = mtime
                    log.info("server token changed (token file rewritten)")
        return self._token


class FailedAttempts:
    """Per-address sliding window of failures; a full window locks the address out."""

    def __init__(self, max_failures: int = 10, window_s: float = 60.0, lockout_s: float = 60.0,
                 max_addresses: int = 10_000) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.lockout_s = lockout_s
        self.max_addresses = max_addresses
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._locked_until: dict[str, float] = {}

    def retry_after(self, address: str) -> float:
        """Seconds `address` stays locked out (0 when it may try)."""
        until = self._locked_until.get(address)
        if until is None:
            return 0.0
        left = until - time.monotonic()
        if left <= 0:
            del self._locked_until[address]
            return 0.0
        return left

    def record_failure(self, address: str) -> None:
        now = time.monotonic()
        times = self._failures.pop(address, None) or deque()
        times.append(now)
        while times and now - times[0] > self.window_s:
            times.popleft()
        if len(times) >= self.max_failures:
            self._locked_until[address] = now + self.lockout_s
            log.warning("locking out %s for %g s after %d failed attempts", address,
                        self.lockout_s, len(times))
            times.clear()
        else:
            self._failures[address] = times
        while len(self._failures) > self.max_addresses:  # bounded memory under a scan
            self._failures.popitem(last=False)

    def record_success(self, address: str) -> None:
        self._failures.pop(address, None)


@dataclass(frozen=True)
class AuthDecision:
    allowed: bool
    reason: str = ""
    retry_after: float = 0.0  # > 0: the address is locked out

    @property
    def locked_out(self) -> bool:
        return self.retry_after > 0


class AuthPolicy:
    def __init__(self, mode: str, tokens: TokenSource, attempts: FailedAttempts,
                 trusted_proxies: Iterable[str] = ()) -> None:
        if mode not in AUTH_MODES:
            raise ValueError(f"auth must be one of {', '.join(AUTH_MODES)}, not {mode!r}")
        self.mode = mode
        self.tokens = tokens
        self.attempts = attempts
        self.trusted_proxies = parse_networks(trusted_proxies)
        if mode == "none":
            log.warning("auth = none: anyone who can reach this server may transcribe")

    @property
    def token_required(self) -> bool:
        """Whether clients on other hosts need a token (what mDNS advertises)."""
        return self.mode != "none"

    def lockout(self, peer: str) -> AuthDecision | None:
        """A refusal when `peer` is locked out, else None (cheap: check before any work)."""
        left = self.attempts.retry_after(peer)
        if left > 0:
            return AuthDecision(False, "too many failed attempts from this address; retry later",
                                left)
        return None

    def client(self, peer: str | None, headers: Mapping[str, str]) -> ClientAddress:
        """Who sent an HTTP request from `peer` (`request.remote`) with `headers`: pass its
        `address` to `lockout`/`check` (with `verified=`), and use it for limits and logs."""
        return client_address(peer, headers, self.trusted_proxies)

    def check(self, peer: str, presented: str | None, *, verified: bool = True) -> AuthDecision:
        """Decide for one attempt from `peer` (the client's address) and record its outcome.

        `verified=False` (a proxied request whose client is not vouched for by a trusted
        proxy): no loopback exemption, whatever `peer` is.
        """
        if (locked := self.lockout(peer)) is not None:
            return locked
        if self.mode == "none" or (self.mode == "remote" and verified and is_loopback(peer)):
            return AuthDecision(True)
        expected = self.tokens.current() or ""
        if presented and expected and hmac.compare_digest(presented.encode(), expected.encode()):
            self.attempts.record_success(peer)
            return AuthDecision(True)
        self.attempts.record_failure(peer)
        return AuthDecision(False, "wrong token" if presented else "a token is required")
