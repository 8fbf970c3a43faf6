"""PinStore and fingerprint helpers, on real files in tmp_path."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import os
import stat
import threading
from pathlib import Path

import pytest

from desktop.lan.pins import PairedServer, PinStore, format_fingerprint, normalise_fingerprint

FP = hashlib.sha256(b"server certificate").hexdigest()
FP2 = hashlib.sha256(b"another certificate").hexdigest()
FP_COLONS = ":".join(FP[i:i + 2] for i in range(0, 64, 2)).upper()


def server(server_id: str = "srv-1", fingerprint: str = FP, name: str = "GPU box",
           url: str = "https://192.168.1.20:8765", paired_at: float = 1_700_000_000.0
           ) -> PairedServer:
    return PairedServer(server_id=server_id, fingerprint=fingerprint, name=name, url=url,
                        paired_at=paired_at)


@pytest.fixture
def pins_file(tmp_path: Path) -> Path:
    return tmp_path / "config" / "paired-servers.json"


# --- fingerprints ----------------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    FP,
    FP.upper(),
    FP_COLONS,
    FP_COLONS.lower(),
    " ".join(FP[i:i + 2] for i in range(0, 64, 2)),
    f"  {FP_COLONS}\n",
    f"SHA256:{FP_COLONS}",
    f"sha256:{FP}",
    f"SHA-256 {FP_COLONS}",
    f"sha256 Fingerprint={FP_COLONS}",  # openssl x509 -fingerprint -sha256
    "SHA256:" + base64.b64encode(bytes.fromhex(FP)).decode().rstrip("="),  # OpenSSH style
])
def test_normalise_fingerprint_accepts_what_people_paste(text: str) -> None:
    assert normalise_fingerprint(text) == FP


@pytest.mark.parametrize(("text", "message"), [
    ("", "is empty"),
    ("SHA256:", "is empty"),
    (FP[:-2], "62 hex digits, expected 64"),
    (FP + "00", "66 hex digits, expected 64"),
    (FP_COLONS[:-3], "62 hex digits"),
    ("SHA256:" + FP[:43], "43 hex digits"),  # truncated hex is not mistaken for base64
    (FP[:-1] + "g", "not hex digits \\(g\\)"),
    (hashlib.sha1(b"x").hexdigest(), "40 hex digits"),  # a SHA-1 fingerprint
    ("MD5:" + FP, "not hex digits"),
])
def test_normalise_fingerprint_rejects_clearly(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"not a SHA-256 fingerprint: .*{message}"):
        normalise_fingerprint(text)


def test_normalise_fingerprint_rejects_non_text() -> None:
    with pytest.raises(ValueError, match="must be text"):
        normalise_fingerprint(bytes.fromhex(FP))  # type: ignore[arg-type]


def test_format_fingerprint() -> None:
    assert format_fingerprint(FP) == FP_COLONS
    assert format_fingerprint(f"sha256:{FP_COLONS.lower()}") == FP_COLONS
    assert len(FP_COLONS) == 95 and FP_COLONS.count(":") == 31
    with pytest.raises(ValueError):
        format_fingerprint("abcd")


def test_paired_server_normalises_and_validates() -> None:
    s = server(fingerprint=FP_COLONS, paired_at=5)
    assert s.fingerprint == FP
    assert s.paired_at == 5.0 and isinstance(s.paired_at, float)
    with pytest.raises(ValueError, match="SHA-256"):
        server(fingerprint="12:34")
    with pytest.raises(ValueError, match="server_id"):
        server(server_id="")
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.name = "renamed"  # type: ignore[misc]


# --- the store -------------------------------------------------------------------------------


def test_round_trip_on_disk(pins_file: Path) -> None:
    store = PinStore(pins_file)
    assert store.all() == [] and store.get("srv-1") is None
    a = server()
    b = server("srv-2", FP2, "laptop", "http://10.0.0.5:8765", 1_700_000_100.5)
    store.add(b)
    store.add(a)
    assert store.get("srv-1") == a
    assert store.all() == [a, b]  # oldest pairing first
    # another process (`earshot pair`) and a restarted app see the same pins
    assert PinStore(pins_file).all() == [a, b]
    data = json.loads(pins_file.read_text())
    assert data["version"] == 1
    assert data["servers"][0] == {"server_id": "srv-1", "fingerprint": FP, "name": "GPU box",
                                  "url": "https://192.168.1.20:8765",
                                  "paired_at": 1_700_000_000.0}
    if os.name == "posix":
        assert stat.S_IMODE(pins_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(pins_file.parent.stat().st_mode) == 0o700
    assert list(pins_file.parent.iterdir()) == [pins_file]  # no temp files left behind


def test_a_write_by_another_process_is_seen(pins_file: Path) -> None:
    app, cli = PinStore(pins_file), PinStore(pins_file)
    assert app.get("srv-1") is None
    cli.add(server())
    assert app.get("srv-1") == server()
    cli.remove("srv-1")
    assert app.get("srv-1") is None


def test_add_replaces_the_same_id(pins_file: Path) -> None:
    store = PinStore(pins_file)
    store.add(server())
    store.add(server("srv-2", FP2))
    newer = server(fingerprint=FP2, name="GPU box (new cert)", paired_at=1_800_000_000.0)
    store.add(newer)
    assert store.get("srv-1") == newer
    assert [s.server_id for s in store.all()] == ["srv-2", "srv-1"]
    assert len(json.loads(pins_file.read_text())["servers"]) == 2


def test_remove(pins_file: Path) -> None:
    store = PinStore(pins_file)
    store.add(server())
    store.add(server("srv-2", FP2))
    store.remove("srv-1")
    assert store.get("srv-1") is None
    assert [s.server_id for s in store.all()] == ["srv-2"]
    store.remove("srv-1")  # missing is fine
    store.remove("never-paired")
    assert [s.server_id for s in PinStore(pins_file).all()] == ["srv-2"]


@pytest.mark.parametrize(("url", "found"), [
    ("https://192.168.1.20:8765", True),
    ("https://192.168.1.20:8765/", True),
    ("http://192.168.1.20:8765", True),  # same host:port, other scheme
    ("HTTP://192.168.1.20:8765//", True),
    ("192.168.1.20:8765", True),  # no scheme
    ("https://192.168.1.20:8766", False),
    ("https://192.168.1.21:8765", False),
    ("https://192.168.1.20", False),  # port 443
    ("https://192.168.1.20:8765/other", False),
    ("", False),
    ("http://192.168.1.20:notaport", False),
    ("not a url at all", False),
])
def test_find_by_url(pins_file: Path, url: str, found: bool) -> None:
    store = PinStore(pins_file)
    store.add(server())
    store.add(server("srv-2", FP2, url="http://192.168.1.20:9000"))
    assert store.find_by_url(url) == (server() if found else None)


def test_find_by_url_host_case_and_default_ports(pins_file: Path) -> None:
    store = PinStore(pins_file)
    s = server(url="https://GPU-Box.local/")
    store.add(s)
    assert store.find_by_url("https://gpu-box.local:443") == s
    assert store.find_by_url("gpu-box.local") is None  # http: port 80
    store.add(server("srv-6", FP2, url="http://[fe80::1]:8765"))
    assert store.find_by_url("https://[FE80::1]:8765/").server_id == "srv-6"


def test_find_by_url_prefers_the_latest_pairing(pins_file: Path) -> None:
    store = PinStore(pins_file)
    store.add(server("old", paired_at=1.0))
    store.add(server("new", FP2, paired_at=2.0))
    assert store.find_by_url("http://192.168.1.20:8765").server_id == "new"


def test_by_fingerprint(pins_file: Path) -> None:
    store = PinStore(pins_file)
    store.add(server())
    store.add(server("srv-2", FP2))
    assert store.by_fingerprint(FP_COLONS).server_id == "srv-1"
    assert store.by_fingerprint(f"SHA256:{FP2.upper()}").server_id == "srv-2"
    assert store.by_fingerprint(hashlib.sha256(b"stranger").hexdigest()) is None
    with pytest.raises(ValueError):
        store.by_fingerprint("12:34")


@pytest.mark.parametrize("junk", ['{"servers": [', "[]", '{"servers": {}}', "\udcff", ""])
def test_a_corrupt_file_reads_as_empty_with_a_warning(
        pins_file: Path, caplog: pytest.LogCaptureFixture, junk: str) -> None:
    pins_file.parent.mkdir(parents=True)
    pins_file.write_text(junk, encoding="utf-8", errors="surrogateescape")
    store = PinStore(pins_file)
    with caplog.at_level(logging.WARNING):
        assert store.all() == []
        assert store.get("srv-1") is None
    assert any("is corrupt" in r.getMessage() for r in caplog.records)
    store.add(server())  # the next write replaces it with a good file
    assert PinStore(pins_file).all() == [server()]


def test_malformed_records_are_skipped(pins_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = dataclasses.asdict(server())
    pins_file.parent.mkdir(parents=True)
    pins_file.write_text(json.dumps({"version": 1, "servers": [
        {**good, "server_id": "bad-fp", "fingerprint": "xyz"},
        {"fingerprint": FP},  # no id
        "not an object",
        good,
    ]}))
    with caplog.at_level(logging.WARNING):
        assert PinStore(pins_file).all() == [server()]
    skipped = [r for r in caplog.records if "skipping a malformed" in r.getMessage()]
    assert len(skipped) == 3


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_loose_permissions_are_tightened(pins_file: Path) -> None:
    store = PinStore(pins_file)
    store.add(server())
    pins_file.chmod(0o666)
    assert store.get("srv-1") == server()
    assert stat.S_IMODE(pins_file.stat().st_mode) == 0o600


def test_concurrent_adds_from_threads_are_all_kept(pins_file: Path) -> None:
    store = PinStore(pins_file)
    start = threading.Barrier(6)

    def worker(n: int) -> None:
        start.wait()
        for i in range(15):
            store.add(server(f"srv-{n}-{i}", paired_at=n * 100 + i))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {s.server_id for s in store.all()} == {
        f"srv-{n}-{i}" for n in range(6) for i in range(15)}


def test_default_path_is_in_the_config_dir(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EARSHOT_CONFIG_DIR", str(tmp_path / "cfg"))
    store = PinStore()
    assert store.path == tmp_path / "cfg" / "paired-servers.json"
    store.add(server())
    assert (tmp_path / "cfg" / "paired-servers.json").is_file()
