"""CredentialStore against real keyring backends and real files (no mocks of keyring itself).

Every test runs with keyring's state isolated: XDG_DATA_HOME / XDG_CONFIG_HOME point into
tmp_path (so keyrings.alt's file and keyring's keyringrc.cfg are the test's own), and the
process-wide backend is restored afterwards. No test can reach the user's real keyring: they
all name their backend, or limit keyring's detection to non-recommended ones.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import stat
import threading
from pathlib import Path

import keyring
import keyring.backend
import keyring.core
import platformdirs
import pytest
from keyring.backend import KeyringBackend
from keyring.errors import KeyringLocked, PasswordDeleteError

from desktop.lan import config_dir as config_dir_module
from desktop.lan.config_dir import config_dir, read_private_json, write_private_json
from desktop.lan.credentials import CredentialStore

SERVER = "srv-5f1c"
TOKEN = "tok-3b9e-secret"

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


class DictKeyring(KeyringBackend):
    """An in-memory backend with a recommended priority, whose set/get can be made to fail
    like a locked Secret Service or a vanished D-Bus. `viable = False` keeps it out of
    keyring's own detection (the class registers itself process-wide on definition)."""

    priority = 5
    viable = False

    def __init__(self) -> None:
        self.secrets: dict[tuple[str, str], str] = {}
        self.fail_set: Exception | None = None
        self.fail_get: Exception | None = None

    def get_password(self, service: str, username: str) -> str | None:
        if self.fail_get is not None:
            raise self.fail_get
        return self.secrets.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        if self.fail_set is not None:
            raise self.fail_set
        self.secrets[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        if self.secrets.pop((service, username), None) is None:
            raise PasswordDeleteError("no such password")


@pytest.fixture(autouse=True)
def isolated_keyring(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    previous = keyring.get_keyring()
    monkeypatch.setattr(keyring.backend, "_limit", keyring.backend._limit)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.delenv("PYTHON_KEYRING_BACKEND", raising=False)
    yield
    keyring.set_keyring(previous)


def use_backend(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """What a user does: name the backend in PYTHON_KEYRING_BACKEND (read at keyring init)."""
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", name)
    keyring.core.init_backend()


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    return tmp_path / "config" / "server-tokens.json"


# --- no usable keyring: the private file -------------------------------------------------


def test_this_machine_without_secret_service_uses_the_file(
        monkeypatch: pytest.MonkeyPatch, token_file: Path) -> None:
    # keyring's own detection, minus any real keyring a developer's desktop may offer: what
    # a box without Secret Service gets (here: keyrings.alt's PlaintextKeyring, priority 0.5,
    # picked automatically; without keyrings.alt: the fail backend)
    keyring.core.init_backend(limit=lambda b: b.priority < 1)
    store = CredentialStore(fallback_path=token_file)
    assert store.backend == "file"
    assert not store.uses_keyring
    assert store.warning == (f"No system keyring found: server tokens are stored in "
                             f"{token_file} (readable only by you).")
    store.set(SERVER, TOKEN)
    assert json.loads(token_file.read_text()) == {SERVER: TOKEN}
    assert store.get(SERVER) == TOKEN
    # nothing went to keyrings.alt's plain-text file
    assert not list((Path(os.environ["XDG_DATA_HOME"])).glob("**/*.cfg"))


@posix_only
def test_file_fallback_round_trip_permissions_and_delete(
        monkeypatch: pytest.MonkeyPatch, token_file: Path) -> None:
    use_backend(monkeypatch, "keyring.backends.fail.Keyring")
    store = CredentialStore(fallback_path=token_file)
    assert store.backend == "file" and store.warning is not None
    assert str(token_file) in store.warning

    assert store.get(SERVER) is None
    store.set(SERVER, TOKEN)
    store.set("other", "tok-2")
    assert mode(token_file) == 0o600
    assert mode(token_file.parent) == 0o700
    assert json.loads(token_file.read_text()) == {SERVER: TOKEN, "other": "tok-2"}
    assert store.get(SERVER) == TOKEN
    assert list(token_file.parent.iterdir()) == [token_file]  # no temp files left behind

    store.set(SERVER, "tok-new")
    assert store.get(SERVER) == "tok-new"
    # another process (the CLI) sees the same tokens
    assert CredentialStore(fallback_path=token_file).get(SERVER) == "tok-new"

    store.delete(SERVER)
    assert store.get(SERVER) is None
    assert json.loads(token_file.read_text()) == {"other": "tok-2"}
    store.delete(SERVER)  # missing is fine
    store.delete("never-seen")


def test_default_fallback_path_is_in_the_config_dir(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EARSHOT_CONFIG_DIR", str(tmp_path / "cfg"))
    use_backend(monkeypatch, "keyring.backends.fail.Keyring")
    store = CredentialStore()
    assert store.fallback_path == tmp_path / "cfg" / "server-tokens.json"
    store.set(SERVER, TOKEN)
    assert json.loads((tmp_path / "cfg" / "server-tokens.json").read_text()) == {SERVER: TOKEN}


def _assert_file_fallback(store: CredentialStore) -> None:
    assert store.backend == "file"
    assert store.warning is not None and str(store.fallback_path) in store.warning
    store.set(SERVER, TOKEN)
    assert json.loads(store.fallback_path.read_text()) == {SERVER: TOKEN}
    assert store.get(SERVER) == TOKEN


def test_the_null_backend_is_not_a_keyring(
        monkeypatch: pytest.MonkeyPatch, token_file: Path) -> None:
    use_backend(monkeypatch, "keyring.backends.null.Keyring")  # `keyring --disable`
    _assert_file_fallback(CredentialStore(fallback_path=token_file))


def test_a_chainer_with_nothing_to_chain_is_not_a_keyring(
        monkeypatch: pytest.MonkeyPatch, token_file: Path) -> None:
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.chainer.ChainerBackend")
    keyring.core.init_backend(limit=lambda b: False)
    assert type(keyring.get_keyring()).__name__ == "ChainerBackend"
    _assert_file_fallback(CredentialStore(fallback_path=token_file))


def test_a_backend_that_cannot_load_falls_back_to_the_file(
        monkeypatch: pytest.MonkeyPatch, token_file: Path) -> None:
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "no_such_module.Keyring")
    monkeypatch.setattr(keyring.core, "_keyring_backend", None)  # loaded on first use
    with pytest.raises(ImportError):
        keyring.get_keyring()
    _assert_file_fallback(CredentialStore(fallback_path=token_file))


def test_an_auto_picked_plaintext_keyring_is_not_trusted(
        monkeypatch: pytest.MonkeyPatch, token_file: Path) -> None:
    from keyrings.alt.file import PlaintextKeyring

    keyring.set_keyring(PlaintextKeyring())  # as keyring picks it when nothing better exists
    store = CredentialStore(fallback_path=token_file)
    assert store.backend == "file"
    store.set(SERVER, TOKEN)
    assert not Path(PlaintextKeyring().file_path).exists()
    assert json.loads(token_file.read_text()) == {SERVER: TOKEN}


def test_a_broken_keyring_probe_falls_back_to_the_file(
        token_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    broken = DictKeyring()
    broken.fail_get = OSError("org.freedesktop.DBus.Error.ServiceUnknown")  # D-Bus gone
    keyring.set_keyring(broken)
    with caplog.at_level(logging.WARNING, logger="desktop.lan.credentials"):
        store = CredentialStore(fallback_path=token_file)
    assert store.backend == "file" and store.warning is not None
    assert "ServiceUnknown" in caplog.text
    store.set(SERVER, TOKEN)
    assert broken.secrets == {}
    assert store.get(SERVER) == TOKEN


def test_corrupt_file_is_reported_and_treated_as_empty(
        monkeypatch: pytest.MonkeyPatch, token_file: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    use_backend(monkeypatch, "keyring.backends.fail.Keyring")
    store = CredentialStore(fallback_path=token_file)
    token_file.parent.mkdir(parents=True)
    for junk in ("{not json", "[1, 2]", "\udcff", ""):
        token_file.write_text(junk, encoding="utf-8", errors="surrogateescape")
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert store.get(SERVER) is None
        assert any("is corrupt" in r.getMessage() for r in caplog.records)
    store.set(SERVER, TOKEN)  # the next write replaces it with a good file
    assert json.loads(token_file.read_text()) == {SERVER: TOKEN}
    # entries that are not tokens are ignored, the rest kept
    token_file.write_text(json.dumps({SERVER: TOKEN, "bad": 3, "empty": ""}))
    assert store.get(SERVER) == TOKEN
    assert store.get("bad") is None


@posix_only
def test_loose_permissions_are_tightened(
        monkeypatch: pytest.MonkeyPatch, token_file: Path) -> None:
    use_backend(monkeypatch, "keyring.backends.fail.Keyring")
    store = CredentialStore(fallback_path=token_file)
    store.set(SERVER, TOKEN)
    token_file.chmod(0o644)
    assert store.get(SERVER) == TOKEN
    assert mode(token_file) == 0o600


def test_a_failed_write_keeps_the_old_file(
        monkeypatch: pytest.MonkeyPatch, token_file: Path) -> None:
    use_backend(monkeypatch, "keyring.backends.fail.Keyring")
    store = CredentialStore(fallback_path=token_file)
    store.set(SERVER, TOKEN)

    def no_replace(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(config_dir_module.os, "replace", no_replace)
    with pytest.raises(OSError, match="disk full"):
        store.set(SERVER, "tok-new")
    monkeypatch.undo()
    assert json.loads(token_file.read_text()) == {SERVER: TOKEN}
    assert list(token_file.parent.iterdir()) == [token_file]


def test_concurrent_sets_from_threads_are_all_kept(
        monkeypatch: pytest.MonkeyPatch, token_file: Path) -> None:
    use_backend(monkeypatch, "keyring.backends.fail.Keyring")
    store = CredentialStore(fallback_path=token_file)
    start = threading.Barrier(6)

    def worker(n: int) -> None:
        start.wait()
        for i in range(15):
            store.set(f"srv-{n}-{i}", f"tok-{n}-{i}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert json.loads(token_file.read_text()) == {
        f"srv-{n}-{i}": f"tok-{n}-{i}" for n in range(6) for i in range(15)}


def test_empty_ids_and_tokens_are_refused(
        monkeypatch: pytest.MonkeyPatch, token_file: Path) -> None:
    use_backend(monkeypatch, "keyring.backends.fail.Keyring")
    store = CredentialStore(fallback_path=token_file)
    with pytest.raises(ValueError, match="server_id"):
        store.set("", TOKEN)
    with pytest.raises(ValueError, match="token"):
        store.set(SERVER, "")
    assert not token_file.exists()


# --- a real keyring ------------------------------------------------------------------------


def test_a_chosen_keyring_holds_the_token_not_the_file(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, token_file: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    use_backend(monkeypatch, "keyrings.alt.file.PlaintextKeyring")
    keyring_file = tmp_path / "xdg-data" / "python_keyring" / "keyring_pass.cfg"
    store = CredentialStore(fallback_path=token_file)
    assert store.uses_keyring
    assert store.backend == "keyrings.alt.file.PlaintextKeyring"
    assert store.warning is None

    store.set(SERVER, TOKEN)
    assert not token_file.exists()
    assert keyring.get_password("earshot", SERVER) == TOKEN
    assert base64.b64encode(TOKEN.encode()).decode() in keyring_file.read_text()  # its format
    assert store.get(SERVER) == TOKEN
    assert CredentialStore(fallback_path=token_file).get(SERVER) == TOKEN

    store.delete(SERVER)
    assert keyring.get_password("earshot", SERVER) is None
    assert store.get(SERVER) is None
    with caplog.at_level(logging.WARNING):
        store.delete(SERVER)  # missing is fine: PasswordDeleteError is quietly ignored
    assert caplog.records == []
    assert store.warning is None


def test_the_service_name_separates_stores(
        monkeypatch: pytest.MonkeyPatch, token_file: Path) -> None:
    use_backend(monkeypatch, "keyrings.alt.file.PlaintextKeyring")
    CredentialStore(service="earshot-test", fallback_path=token_file).set(SERVER, TOKEN)
    assert keyring.get_password("earshot-test", SERVER) == TOKEN
    assert CredentialStore(fallback_path=token_file).get(SERVER) is None


def test_a_keyring_that_refuses_a_token_falls_back_to_the_file_with_a_warning(
        token_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    backend = DictKeyring()
    keyring.set_keyring(backend)
    store = CredentialStore(fallback_path=token_file)
    assert store.uses_keyring and store.warning is None
    store.set("first", "tok-1")
    assert backend.secrets == {("earshot", "first"): "tok-1"}

    backend.fail_set = KeyringLocked("Failed to unlock the collection!")
    with caplog.at_level(logging.WARNING, logger="desktop.lan.credentials"):
        store.set(SERVER, TOKEN)
    assert "Failed to unlock" in caplog.text
    assert json.loads(token_file.read_text()) == {SERVER: TOKEN}
    assert store.warning is not None
    assert str(token_file) in store.warning and "could not be saved" in store.warning
    assert store.get(SERVER) == TOKEN       # keyring first (absent), then the file
    assert store.get("first") == "tok-1"

    # a keyring that fails on read is skipped, the file still answers
    backend.fail_get = OSError("connection closed")
    assert store.get(SERVER) == TOKEN
    assert store.get("first") is None
    backend.fail_get = None

    # once the keyring works again, the token moves there and the warning goes away
    backend.fail_set = None
    store.set(SERVER, "tok-new")
    assert backend.secrets[("earshot", SERVER)] == "tok-new"
    assert json.loads(token_file.read_text()) == {}
    assert store.warning is None


def test_delete_removes_a_token_from_keyring_and_file(token_file: Path) -> None:
    backend = DictKeyring()
    keyring.set_keyring(backend)
    store = CredentialStore(fallback_path=token_file)
    store.set(SERVER, TOKEN)
    backend.fail_set = KeyringLocked("locked")
    store.set("other", "tok-2")
    backend.fail_set = None
    store.delete(SERVER)
    store.delete("other")
    assert backend.secrets == {}
    assert json.loads(token_file.read_text()) == {}
    assert store.get(SERVER) is None and store.get("other") is None


# --- migration from plain-text settings ------------------------------------------------------


def test_migrate_plaintext_into_the_file(
        monkeypatch: pytest.MonkeyPatch, token_file: Path) -> None:
    use_backend(monkeypatch, "keyring.backends.fail.Keyring")
    store = CredentialStore(fallback_path=token_file)
    assert store.migrate_plaintext({}) == 0
    assert store.migrate_plaintext({"a": "tok-a", "b": "tok-b", "c": "", "": "tok"}) == 2
    assert json.loads(token_file.read_text()) == {"a": "tok-a", "b": "tok-b"}


def test_migrate_plaintext_into_the_keyring_keeps_newer_tokens(
        monkeypatch: pytest.MonkeyPatch, token_file: Path) -> None:
    use_backend(monkeypatch, "keyrings.alt.file.PlaintextKeyring")
    store = CredentialStore(fallback_path=token_file)
    store.set("a", "tok-a-new")
    assert store.migrate_plaintext({"a": "tok-a-old", "b": "tok-b"}) == 1
    assert keyring.get_password("earshot", "a") == "tok-a-new"
    assert keyring.get_password("earshot", "b") == "tok-b"
    assert not token_file.exists()
    assert store.migrate_plaintext({"a": "tok-a-old", "b": "tok-b"}) == 0


# --- config_dir and the private JSON files ---------------------------------------------------


@posix_only
def test_config_dir_honours_the_env_var_and_is_private(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EARSHOT_CONFIG_DIR", str(tmp_path / "a" / "earshot"))
    path = config_dir()
    assert path == tmp_path / "a" / "earshot"
    assert path.is_dir() and mode(path) == 0o700


@pytest.mark.skipif(os.name == "nt", reason="Windows asks the shell, not the environment")
def test_config_dir_defaults_to_platformdirs(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("EARSHOT_CONFIG_DIR")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home-config"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # macOS: ~/Library/Application Support
    path = config_dir()
    assert path == platformdirs.user_config_path("earshot")
    assert path.is_relative_to(tmp_path)
    assert path.is_dir()


def test_private_json_round_trip_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "new" / "f.json"
    assert read_private_json(path) == {}
    write_private_json(path, {"k": ["v", 1]})
    assert read_private_json(path) == {"k": ["v", 1]}
    if os.name == "posix":
        assert mode(path) == 0o600 and mode(path.parent) == 0o700
