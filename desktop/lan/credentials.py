"""Where the app keeps the tokens of paired servers: the OS keyring, else a private file.

`CredentialStore` stores one token per server id (username = server id, service = "earshot"
in the keyring's terms). The keyring backend is chosen once, at construction, from
`keyring.get_keyring()` (which honours `PYTHON_KEYRING_BACKEND` and keyring's own
`keyringrc.cfg`). It is used unless it is:

* keyring's fail backend, the null backend or anything else with `priority <= 0`, or a chainer
  with nothing to chain;
* a backend that keyring itself does not recommend (`priority < 1`: keyrings.alt's plain-text
  and password-file keyrings) and that was picked automatically rather than named in
  `PYTHON_KEYRING_BACKEND` / `keyringrc.cfg`: such a file is no safer than ours, and the
  encrypted one would ask for a password on stdin;
* broken: loading it, reading its priority or a probe `get_password` raised (no D-Bus, a
  Secret Service that vanished, ...; caught broadly, logged).

Without a usable keyring, tokens go to a JSON file {server_id: token} (default
`config_dir() / "server-tokens.json"`), mode 0600 in a 0700 folder, written atomically;
`backend` is then "file" and `warning` a sentence for the UI. A corrupt file is logged and
read as empty; a file found readable by others is tightened to 0600.

With a keyring, a `set` that fails at run time (keyring locked, D-Bus gone) stores that token
in the file instead, and `warning` says so for as long as the file holds tokens; `get` looks
in the keyring, then in the file; `delete` removes the token from both.

Threads: one store may be shared by the GUI thread and the app's asyncio thread. Writes
(`set`, `delete`, `migrate_plaintext`) hold a lock; the file is re-read on every call, so a
token written by another process (`earshot pair` on the command line) is seen at once. Two
processes writing at the same instant may lose one update (last writer wins); neither ever
sees a half-written file. Keyring calls may block (an unlock prompt): call them off the GUI
thread where that matters. No Qt here: the CLI uses this module too.
"""

from __future__ import annotations

import configparser
import logging
import os
import threading
from pathlib import Path

import keyring
from keyring.backend import KeyringBackend
from keyring.backends import chainer, fail
from keyring.errors import PasswordDeleteError
from keyring.util import platform_

from desktop.lan.config_dir import config_dir, read_private_json, write_private_json

log = logging.getLogger(__name__)

FILE_BACKEND = "file"
RECOMMENDED_PRIORITY = 1.0  # keyring.core.recommended(): what keyring itself would advise
_PROBE_USER = "earshot-keyring-probe"
_FRIENDLY_NAMES = {
    "keyring.backends.SecretService.Keyring": "Secret Service",
    "keyring.backends.libsecret.Keyring": "Secret Service (libsecret)",
    "keyring.backends.kwallet.DBusKeyring": "KWallet",
    "keyring.backends.kwallet.DBusKeyringKWallet4": "KWallet 4",
    "keyring.backends.macOS.Keyring": "macOS Keychain",
    "keyring.backends.Windows.WinVaultKeyring": "Windows Credential Manager",
}


def _qualified_name(backend: KeyringBackend) -> str:
    cls = type(backend)
    return f"{cls.__module__}.{cls.__name__}"


def _chained(backend: KeyringBackend) -> list[KeyringBackend]:
    """The backends a chainer would use, best first ([backend] for any other backend)."""
    if isinstance(backend, chainer.ChainerBackend):
        return list(type(backend).backends)
    return [backend]


def backend_display_name(backend: KeyringBackend) -> str:
    """"Secret Service", "macOS Keychain", ...; the class's full name for other backends."""
    if isinstance(backend, chainer.ChainerBackend):
        names = [backend_display_name(b) for b in _chained(backend)]
        return " + ".join(names) if names else _qualified_name(backend)
    return _FRIENDLY_NAMES.get(_qualified_name(backend), _qualified_name(backend))


def _configured_backend_name() -> str | None:
    """The backend named by PYTHON_KEYRING_BACKEND or keyring's keyringrc.cfg, if any."""
    name = os.environ.get("PYTHON_KEYRING_BACKEND", "").strip()
    if name:
        return name
    config = configparser.RawConfigParser()
    try:
        config.read(platform_.config_root() / "keyringrc.cfg", encoding="utf-8")
        return config.get("backend", "default-keyring").strip() or None
    except (configparser.Error, OSError, UnicodeDecodeError):
        return None


def _unusable_reason(backend: KeyringBackend) -> str | None:
    """Why `backend` must not hold tokens, or None when it may."""
    if isinstance(backend, fail.Keyring):
        return "keyring found no backend"
    try:
        priority = type(backend).priority
        chained = _chained(backend)
        best_priority = type(chained[0]).priority if chained else 0
    except Exception as e:  # a backend's priority probes D-Bus etc.; anything may surface
        return f"it is not viable ({type(e).__name__}: {e})"
    if priority <= 0:
        return f"its priority is {priority:g}"
    if not chained:
        return "the chainer has no backends"
    explicit = _configured_backend_name() == _qualified_name(backend)
    if best_priority < RECOMMENDED_PRIORITY and not explicit:
        return (f"{_qualified_name(chained[0])} is not a recommended keyring (priority "
                f"{best_priority:g}) and was not chosen in PYTHON_KEYRING_BACKEND")
    return None


def _select_keyring(service: str) -> KeyringBackend | None:
    """The keyring backend to use, or None for the file (every rejection is logged)."""
    try:
        backend = keyring.get_keyring()
    except Exception as e:  # a configured backend that cannot load: bad name, no D-Bus, ...
        log.warning("cannot load the keyring backend (%s: %s): using a file", type(e).__name__, e)
        return None
    reason = _unusable_reason(backend)
    if reason is not None:
        log.info("not using keyring backend %s: %s", _qualified_name(backend), reason)
        return None
    try:
        backend.get_password(service, _PROBE_USER)
    except Exception as e:  # KeyringError, NoKeyringError, a broken D-Bus (jeepney, OSError, ...)
        log.warning("keyring backend %s does not work (%s: %s): using a file",
                    _qualified_name(backend), type(e).__name__, e)
        return None
    return backend


def _check(name: str, value: object) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, not {value!r}")


class CredentialStore:
    """Server tokens by server id: in the OS keyring when there is a usable one, else in a
    0600 JSON file. See the module docstring for the selection, fallback and thread rules.

    `backend` names where new tokens go ("Secret Service", "macOS Keychain",
    "Windows Credential Manager", a keyring class's full name, or "file").
    """

    def __init__(self, service: str = "earshot", fallback_path: Path | None = None) -> None:
        _check("service", service)
        self.service = service
        self.fallback_path = (Path(fallback_path) if fallback_path is not None
                              else config_dir() / "server-tokens.json")
        self._lock = threading.RLock()
        self._keyring = _select_keyring(service)
        self.backend: str = (backend_display_name(self._keyring) if self._keyring is not None
                             else FILE_BACKEND)

    @property
    def uses_keyring(self) -> bool:
        """True when tokens go to an OS keyring (some may still sit in the file, see `warning`)."""
        return self._keyring is not None

    @property
    def warning(self) -> str | None:
        """None when every token is in a real keyring, else one sentence for the UI."""
        if self._keyring is None:
            return (f"No system keyring found: server tokens are stored in {self.fallback_path} "
                    "(readable only by you).")
        if self._read_file():
            return (f"Some server tokens could not be saved in {self.backend}: they are stored "
                    f"in {self.fallback_path} (readable only by you).")
        return None

    def get(self, server_id: str) -> str | None:
        """The token for `server_id`: the keyring's, else the file's, else None.

        A keyring that fails to answer (locked, D-Bus gone) is logged and skipped."""
        if self._keyring is not None:
            try:
                token = self._keyring.get_password(self.service, server_id)
            except Exception as e:  # see _select_keyring: any failure means "not there now"
                log.warning("cannot read the token for %s from %s (%s: %s)",
                            server_id, self.backend, type(e).__name__, e)
                token = None
            if token is not None:
                return token
        token = self._read_file().get(server_id)
        return token

    def set(self, server_id: str, token: str) -> None:
        """Store `token` for `server_id`, replacing any earlier one.

        Goes to the keyring when there is one; if the keyring refuses (locked, D-Bus gone),
        to the file, and `warning` says so. Raises ValueError for an empty id or token, and
        OSError only when the token could be stored nowhere."""
        _check("server_id", server_id)
        _check("token", token)
        with self._lock:
            if self._keyring is not None:
                try:
                    self._keyring.set_password(self.service, server_id, token)
                except Exception as e:  # whatever the backend raised, the file still works
                    log.warning("cannot save the token for %s in %s (%s: %s): storing it in %s",
                                server_id, self.backend, type(e).__name__, e,
                                self.fallback_path)
                else:
                    self._discard_from_file(server_id)
                    return
            tokens = self._read_file()
            tokens[server_id] = token
            write_private_json(self.fallback_path, tokens)

    def delete(self, server_id: str) -> None:
        """Forget the token for `server_id` in the keyring and the file; missing is fine.

        A keyring that fails to delete is logged, not raised; OSError when the file holds the
        token and cannot be rewritten."""
        with self._lock:
            if self._keyring is not None:
                try:
                    self._keyring.delete_password(self.service, server_id)
                except PasswordDeleteError:
                    pass  # not there
                except Exception as e:  # locked, D-Bus gone: nothing the caller can do
                    log.warning("cannot delete the token for %s from %s (%s: %s)",
                                server_id, self.backend, type(e).__name__, e)
            self._discard_from_file(server_id, must=True)

    def migrate_plaintext(self, tokens: dict[str, str]) -> int:
        """Move tokens from the old plain-text settings ({server_id: token}) into the store.

        Empty ids or tokens are skipped, and so is a server that already has a token here
        (the store is newer than the old settings). Returns how many tokens were stored; the
        caller then deletes the old settings."""
        moved = 0
        with self._lock:
            for server_id, token in tokens.items():
                if not (isinstance(server_id, str) and server_id
                        and isinstance(token, str) and token):
                    continue
                if self.get(server_id) is not None:
                    continue
                self.set(server_id, token)
                moved += 1
        if moved:
            log.info("moved %d server token(s) from plain-text settings to %s",
                     moved, self.backend)
        return moved

    def _read_file(self) -> dict[str, str]:
        data = read_private_json(self.fallback_path)
        tokens = {k: v for k, v in data.items() if isinstance(v, str) and v}
        if len(tokens) != len(data):
            log.warning("%s: ignoring %d entries that are not tokens",
                        self.fallback_path, len(data) - len(tokens))
        return tokens

    def _discard_from_file(self, server_id: str, must: bool = False) -> None:
        """Drop `server_id` from the file; a failed rewrite raises if `must`, else is logged."""
        tokens = self._read_file()
        if server_id not in tokens:
            return
        del tokens[server_id]
        try:
            write_private_json(self.fallback_path, tokens)
        except OSError as e:
            if must:
                raise
            log.warning("cannot remove the token for %s from %s: %s",
                        server_id, self.fallback_path, e)
