"""The server's persistent identity: a server id and a self-signed TLS certificate.

On first start the server creates, in its state folder, `server-id` (16 hex digits) and
`identity-cert.pem` + `identity-key.pem` (an ECDSA P-256 key, mode 0600, and a certificate
valid for 20 years naming the host). Both survive restarts and upgrades: the app pins the
id and the certificate's SHA-256 fingerprint when it pairs, and the mDNS record carries
both. `rotate_identity()` replaces them (paired apps must pair again). The state folder is
`--state-dir`, else $EARSHOT_SERVER_STATE_DIR, else `<user data dir>/earshot/server`.
Creation and rotation hold a lock file in the state folder, so two servers starting at
once share one identity (the second reads what the first wrote); each file is written
atomically. Pure file work: call it before the event loop starts or
from a thread.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import ipaddress
import logging
import os
import secrets
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import platformdirs

try:
    import fcntl
except ImportError:  # Windows: one server per state folder is the admin's job there
    fcntl = None  # type: ignore[assignment]
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)
STATE_DIR_ENV = "EARSHOT_SERVER_STATE_DIR"
ID_FILE, CERT_FILE, KEY_FILE = "server-id", "identity-cert.pem", "identity-key.pem"
LOCK_FILE = ".identity.lock"
VALID_DAYS = 20 * 365


@dataclass(frozen=True)
class ServerIdentity:
    server_id: str
    cert_path: Path
    key_path: Path
    fingerprint: str  # SHA-256 of the certificate (DER), 64 lowercase hex digits

    @property
    def fingerprint_display(self) -> str:
        return format_fingerprint(self.fingerprint)


def default_state_dir() -> Path:
    if os.environ.get(STATE_DIR_ENV):
        return Path(os.environ[STATE_DIR_ENV])
    return platformdirs.user_data_path("earshot") / "server"


def format_fingerprint(hex_digest: str) -> str:
    """`AB:CD:...`: how browsers and `openssl x509 -fingerprint` show it."""
    return ":".join(hex_digest[i:i + 2] for i in range(0, len(hex_digest), 2)).upper()


def certificate_fingerprint(pem_or_der: bytes) -> str:
    """SHA-256 of a certificate's DER form, lowercase hex (what TLS clients pin).
    Raises ValueError when the bytes are no certificate."""
    if pem_or_der.lstrip().startswith(b"-----BEGIN"):
        cert = x509.load_pem_x509_certificate(pem_or_der)
    else:
        cert = x509.load_der_x509_certificate(pem_or_der)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically, mode 0600; never replaces an existing file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    try:
        os.link(tmp, path)  # fails if another process created it first: keep theirs
    except FileExistsError:
        pass
    finally:
        tmp.unlink()


def _host_names() -> tuple[list[str], list[ipaddress.IPv4Address | ipaddress.IPv6Address]]:
    host = socket.gethostname().split(".")[0] or "earshot"
    names = sorted({host, f"{host}.local", "localhost"})
    ips: list = [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    try:
        import ifaddr

        for adapter in ifaddr.get_adapters():
            for ip in adapter.ips:
                if isinstance(ip.ip, str):
                    ips.append(ipaddress.ip_address(ip.ip))
    except Exception as exc:  # addresses in the certificate are a convenience only
        log.debug("cannot list interface addresses: %s", exc)
    return names, sorted(set(ips), key=lambda a: (a.version, int(a)))


def _new_certificate(server_id: str) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) of a fresh self-signed server certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    names, ips = _host_names()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"earshot-{server_id}"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Earshot server")])
    now = datetime.datetime.now(datetime.UTC)
    san = [x509.DNSName(n) for n in names] + [x509.IPAddress(ip) for ip in ips]
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False,
                                         content_commitment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


@contextlib.contextmanager
def _creation_lock(folder: Path) -> Iterator[None]:
    """Serialise identity creation between processes (two servers starting at once)."""
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def load_or_create_identity(state_dir: Path | None = None) -> ServerIdentity:
    """The server's identity, created on first use. Raises ValueError if it is damaged."""
    folder = Path(state_dir) if state_dir else default_state_dir()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    with _creation_lock(folder):
        return _load_or_create(folder)


def _load_or_create(folder: Path) -> ServerIdentity:
    id_path, cert_path, key_path = folder / ID_FILE, folder / CERT_FILE, folder / KEY_FILE
    if not id_path.exists():
        _write_private(id_path, (secrets.token_hex(8) + "\n").encode())
    server_id = id_path.read_text(encoding="ascii", errors="replace").strip()
    if not server_id or not all(c in "0123456789abcdef" for c in server_id):
        raise ValueError(f"server id file {id_path} is damaged: run "
                         "`earshot-server identity --rotate-identity`")
    if not cert_path.exists() or not key_path.exists():
        cert_pem, key_pem = _new_certificate(server_id)
        for path in (cert_path, key_path):
            path.unlink(missing_ok=True)  # never pair a new key with an old certificate
        _write_private(key_path, key_pem)
        _write_private(cert_path, cert_pem)
        log.info("created the server identity in %s", folder)
    if key_path.stat().st_mode & 0o077:
        key_path.chmod(0o600)
    try:
        fingerprint = certificate_fingerprint(cert_path.read_bytes())
    except ValueError as exc:
        raise ValueError(f"identity certificate {cert_path} is damaged ({exc}): run "
                         "`earshot-server identity --rotate-identity`") from None
    return ServerIdentity(server_id, cert_path, key_path, fingerprint)


def rotate_identity(state_dir: Path | None = None) -> ServerIdentity:
    """Replace the server id and certificate (every paired app must pair again)."""
    folder = Path(state_dir) if state_dir else default_state_dir()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    with _creation_lock(folder):
        for name in (ID_FILE, CERT_FILE, KEY_FILE):
            (folder / name).unlink(missing_ok=True)
        return _load_or_create(folder)
