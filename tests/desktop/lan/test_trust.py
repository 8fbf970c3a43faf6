"""The trust rules over real pin and credential files: what Automatic may use."""

from __future__ import annotations

import time

import pytest

from desktop.lan.credentials import CredentialStore
from desktop.lan.discovery import DiscoveredServer
from desktop.lan.pins import PairedServer, PinStore
from desktop.lan.trust import assess, automatic, url_token_key

FP, OTHER = "ab" * 32, "cd" * 32


def record(name="box", address="10.0.0.5", server_id="1111222233334444", fp=FP, tls=True,
           auth="remote", device="cpu", capacity=4) -> DiscoveredServer:
    scheme = "https" if tls else "http"
    return DiscoveredServer(service=f"{name}._earshot._tcp.local.", name=name,
                            url=f"{scheme}://{address}:8765", device=device,
                            capacity=capacity, token_required=auth != "none",
                            models=("moonshine-tiny-en",), protocol=1, server_id=server_id,
                            fingerprint=fp if tls else "", tls=tls, address=address, auth=auth)


@pytest.fixture
def stores(tmp_path):
    return PinStore(tmp_path / "pins.json"), CredentialStore(fallback_path=tmp_path / "t.json")


def paired(stores, server_id="1111222233334444", fp=FP, token="secret"):
    pins, credentials = stores
    pins.add(PairedServer(server_id, fp, "box", "https://10.0.0.5:8765", time.time()))
    credentials.set(server_id, token)


def test_unpaired_remote_servers_need_pairing(stores):
    a = assess(record(), *stores)
    assert not a.usable and a.needs_pairing and a.token is None


def test_paired_server_with_its_pinned_certificate_is_usable(stores):
    paired(stores)
    a = assess(record(), *stores)
    assert a.usable and a.status == "paired" and a.token == "secret" and a.fingerprint == FP


def test_a_paired_id_with_another_fingerprint_is_refused_with_a_warning(stores):
    paired(stores)
    a = assess(record(fp=OTHER, device="cuda", capacity=99), *stores)
    assert not a.usable and a.status == "mismatch" and a.token is None
    assert "Refused 'box'" in a.warning and "Nothing was sent" in a.warning


def test_a_loopback_record_claiming_a_paired_id_is_held_to_the_pin(stores):
    paired(stores)
    copied = assess(record(address="127.0.0.1", tls=False, fp=FP), *stores)  # fp="" w/o TLS
    assert not copied.usable and copied.token is None
    plain = assess(record(address="127.0.0.1", tls=False), *stores)
    assert not plain.usable and plain.token is None


def test_this_machines_server_needs_no_pairing_and_never_gets_a_paired_token(stores):
    paired(stores, server_id="aaaabbbbccccdddd")
    local = record(address="127.0.0.1", tls=False, server_id="9999888877776666")
    a = assess(local, *stores)
    assert a.usable and a.status == "local" and a.token is None and a.fingerprint is None
    strict = record(address="127.0.0.1", tls=False, auth="all", server_id="9999888877776666")
    assert assess(strict, *stores).needs_pairing
    stores[1].set(url_token_key(strict.url), "local-token")
    assert assess(strict, *stores).token == "local-token"


def test_open_servers_are_never_automatic_even_paired(stores):
    paired(stores)
    assert assess(record(auth="none"), *stores).status == "open"
    assert assess(record(address="127.0.0.1", auth="none", tls=False,
                         server_id="0000111122223333"), *stores).status == "open"


def test_a_paired_server_that_dropped_tls_is_refused(stores):
    paired(stores)
    a = assess(record(tls=False, fp=FP), *stores)
    assert a.status in ("mismatch", "no tls") and not a.usable and a.warning


def test_automatic_ranks_gpu_then_capacity_and_reports_warnings(stores):
    paired(stores, "1111222233334444")
    paired(stores, "5555666677778888", token="t2")
    servers = [record("cpu-big", server_id="1111222233334444", capacity=50),
               record("gpu", address="10.0.0.6", server_id="5555666677778888", device="cuda",
                      capacity=2),
               record("fake", address="10.0.0.7", server_id="1111222233334444", fp=OTHER,
                      device="cuda", capacity=99)]
    usable, warnings = automatic(servers, *stores)
    assert [a.server.name for a in usable] == ["gpu", "cpu-big"]
    assert len(warnings) == 1 and "fake" in warnings[0]
