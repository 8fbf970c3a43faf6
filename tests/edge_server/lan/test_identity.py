"""The server's persistent identity: created once, private, stable, rotatable, checked."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys

import pytest
from cryptography import x509

from edge_server.lan.identity import (
    certificate_fingerprint,
    format_fingerprint,
    load_or_create_identity,
    rotate_identity,
)
from tests.file_modes import mode, posix_only


@posix_only
def test_created_once_private_and_stable(tmp_path):
    first = load_or_create_identity(tmp_path / "state")
    assert len(first.server_id) == 16 and len(first.fingerprint) == 64
    assert mode(first.key_path) == 0o600 and mode(tmp_path / "state") == 0o700
    again = load_or_create_identity(tmp_path / "state")
    assert again == first  # a restart (or an upgrade: nothing lives in the package)
    assert certificate_fingerprint(first.cert_path.read_bytes()) == first.fingerprint


def test_certificate_serves_tls_and_names_this_host(tmp_path):
    identity = load_or_create_identity(tmp_path)
    cert = x509.load_pem_x509_certificate(identity.cert_path.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert any(n.endswith(".local") for n in names.get_values_for_type(x509.DNSName))
    assert identity.server_id in cert.subject.rfc4514_string()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(identity.cert_path, identity.key_path)  # key matches the cert


def test_rotation_replaces_id_and_certificate(tmp_path):
    old = load_or_create_identity(tmp_path)
    new = rotate_identity(tmp_path)
    assert new.server_id != old.server_id and new.fingerprint != old.fingerprint
    assert load_or_create_identity(tmp_path) == new


def test_damaged_identity_is_a_clear_error(tmp_path):
    identity = load_or_create_identity(tmp_path)
    identity.cert_path.write_text("not a certificate")
    with pytest.raises(ValueError, match="rotate-identity"):
        load_or_create_identity(tmp_path)
    (tmp_path / "server-id").write_text("../../etc")
    with pytest.raises(ValueError, match="server id file"):
        load_or_create_identity(tmp_path)


def test_a_missing_key_regenerates_the_pair_never_mixes_them(tmp_path):
    old = load_or_create_identity(tmp_path)
    old.key_path.unlink()
    new = load_or_create_identity(tmp_path)
    assert new.server_id == old.server_id and new.fingerprint != old.fingerprint
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(new.cert_path, new.key_path)


def test_identity_command_shows_and_rotates(tmp_path):
    cmd = [sys.executable, "-m", "edge_server.cli", "identity", "--state-dir", str(tmp_path)]
    shown = json.loads(subprocess.run([*cmd, "--json"], capture_output=True, text=True,
                                      check=True).stdout)
    human = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    assert shown["server_id"] in human and format_fingerprint(shown["fingerprint"]) in human
    rotated = subprocess.run([*cmd, "--rotate-identity"], capture_output=True, text=True,
                             check=True).stdout
    assert "pair again" in rotated and shown["server_id"] not in rotated


def test_servers_starting_at_once_share_one_identity(tmp_path):
    cmd = [sys.executable, "-m", "edge_server.cli", "identity", "--json", "--state-dir",
           str(tmp_path)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(4)]
    shown = {p.communicate(timeout=60)[0] for p in procs}
    assert len(shown) == 1  # one id and one certificate, whoever came first
    identity = load_or_create_identity(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(identity.cert_path, identity.key_path)  # key and cert match


def test_identity_command_reads_the_state_dir_of_a_config_file(tmp_path):
    config = tmp_path / "server.toml"
    config.write_text(f'state_dir = "{tmp_path / "configured"}"\n')
    out = subprocess.run([sys.executable, "-m", "edge_server.cli", "identity", "--json",
                          "--config", str(config)], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["certificate"].startswith(str(tmp_path / "configured"))
