"""A client on another host: a network namespace joined to this one by a veth pair.

The server binds the host side (10.231.x.1), so it serves https/wss with its identity
certificate; the client runs inside the namespace with `ip netns exec`, so the server sees
a real non-loopback peer (10.231.x.2). Needs root and iproute2 (`python3 dev.py test`
installs it); nothing leaves this machine. Also: an admin's own TLS certificate.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
import time

import pytest
import trustme

from edge_server.evaluation import word_error_rate
from tests.conftest import DEV, dev_rows
from tests.server_harness import start_server

ROW = dev_rows(("librispeech-test-clean-kw",))[0]
WAV = DEV / ROW["path"]
SUBNET = 10 + os.getpid() % 200  # 10.231.SUBNET.0/24: distinct per concurrent run


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def netns():
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("needs root and iproute2 to build a network namespace")
    ns, host_if, ns_if = f"earshot-{os.getpid()}", f"eh{os.getpid()}", f"en{os.getpid()}"
    host_ip, client_ip = f"10.231.{SUBNET}.1", f"10.231.{SUBNET}.2"
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        sh("ip", "link", "set", ns_if, "netns", ns)
        sh("ip", "addr", "add", f"{host_ip}/24", "dev", host_if)
        sh("ip", "link", "set", host_if, "up")
        sh("ip", "-n", ns, "addr", "add", f"{client_ip}/24", "dev", ns_if)
        sh("ip", "-n", ns, "link", "set", ns_if, "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield ns, host_ip
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)


@pytest.fixture(scope="module")
def lan_server(netns, tmp_path_factory):
    _, host_ip = netns
    token_file = tmp_path_factory.mktemp("token") / "server-token"
    srv = start_server("--host", host_ip, "--token-file", str(token_file))
    yield srv, token_file
    srv.stop()


def in_namespace(ns: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, sys.executable, *args],
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, **(env or {})))


def transcribe_from(ns: str, url: str, token: str | None,
                    fingerprint: str | None = None) -> subprocess.CompletedProcess:
    args = ["-m", "desktop.cli", "transcribe", "--server", url, "--format", "json", str(WAV)]
    return in_namespace(ns, *args, *(["--token", token] if token else []),
                        *(["--fingerprint", fingerprint] if fingerprint else []))


# the recipe of docs/lan-server.md: trust the box's own certificate (copied from the box)
OPENAI_CLIENT = """
import json, ssl, sys, openai
ctx = ssl.create_default_context(cafile=sys.argv[4])
ctx.check_hostname = False
c = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key=sys.argv[2], max_retries=0,
                  http_client=openai.DefaultHttpxClient(verify=ctx))
try:
    print(json.dumps({"text": c.audio.transcriptions.create(
        model="whisper-1", file=open(sys.argv[3], "rb")).text}))
except openai.APIStatusError as e:
    print(json.dumps({"status": e.status_code, "code": e.body.get("code")}))
"""


def test_remote_client_needs_the_token_over_tls(netns, lan_server):
    ns, _ = netns
    srv, token_file = lan_server
    token = token_file.read_text().strip()
    assert srv.url.startswith("https://") and len(srv.fingerprint) == 64
    for presented in (None, "wrong-token"):
        out = transcribe_from(ns, srv.url, presented, srv.fingerprint)
        assert out.returncode == 1 and "unauthorized" in out.stderr, out.stderr
    out = transcribe_from(ns, srv.url, token, srv.fingerprint)
    assert out.returncode == 0, out.stderr
    text = json.loads(out.stdout)[0]["text"]
    assert word_error_rate([ROW["transcript"]], [text]).wer < 0.2
    wrong_pin = transcribe_from(ns, srv.url, token, "ab" * 32)  # an impostor's certificate
    assert wrong_pin.returncode == 1 and "identity_mismatch" in wrong_pin.stderr
    unpinned = transcribe_from(ns, srv.url, token)  # self-signed: not trusted by default
    assert unpinned.returncode == 1 and "earshot pair" in unpinned.stderr
    refused = json.loads(in_namespace(ns, "-c", OPENAI_CLIENT, srv.url, "guess", str(WAV),
                                      srv.cert_path).stdout)
    assert refused == {"status": 401, "code": "invalid_api_key"}
    ok = json.loads(in_namespace(ns, "-c", OPENAI_CLIENT, srv.url, token, str(WAV),
                                 srv.cert_path).stdout)
    assert word_error_rate([ROW["transcript"]], [ok["text"]]).wer < 0.2


PLAIN_CLIENT = """
import json, sys, urllib.request, urllib.error
try:
    urllib.request.urlopen(sys.argv[1] + "/healthz", timeout=10)
    print(json.dumps({"status": 200}))
except urllib.error.HTTPError as e:
    print(json.dumps({"status": e.code, "body": json.loads(e.read())}))
"""


def test_plain_http_from_another_host_is_refused_with_tls_required(netns, lan_server):
    ns, _ = netns
    srv, _ = lan_server
    plain = srv.url.replace("https://", "http://")
    out = json.loads(in_namespace(ns, "-c", PLAIN_CLIENT, plain).stdout)
    assert out["status"] == 403 and out["body"]["error"]["code"] == "tls_required"
    assert "https://" in out["body"]["error"]["message"]
    assert srv.health()["status"] == "ready"  # over https, from this host


TRICKLE_CLIENT = """
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
started = time.monotonic()
try:
    for c in b"GET /healthz HTTP/1.1\\r\\nHost: x\\r\\nX-Slow: " + b"a" * 200:
        s.send(bytes([c]))
        time.sleep(0.2)
except OSError:
    pass
print(round(time.monotonic() - started, 1))
"""


def test_a_trickling_plain_request_is_cut_off(netns, lan_server):
    ns, host_ip = netns
    srv, _ = lan_server
    port = srv.url.rsplit(":", 1)[1]
    seconds = float(in_namespace(ns, "-c", TRICKLE_CLIENT, host_ip, port).stdout)
    assert seconds < 10  # cut after REFUSAL_READ_S, not after 40 s of trickling
    assert srv.health()["status"] == "ready"


def test_plain_lan_opt_out_is_explicit_and_logged(netns, tmp_path):
    ns, host_ip = netns
    srv = start_server("--noop-engine", "--host", host_ip, "--allow-plain-lan")
    try:
        out = json.loads(in_namespace(ns, "-c", PLAIN_CLIENT,
                                      srv.url.replace("https://", "http://")).stdout)
        assert out == {"status": 200}
        assert any("allow_plain_lan" in line and "WARNING" in line for line in srv.log)
    finally:
        srv.stop()


def test_rotated_token_takes_effect_on_the_running_server(netns, lan_server):
    ns, _ = netns
    srv, token_file = lan_server
    old = token_file.read_text().strip()
    cmd = [sys.executable, "-m", "edge_server.cli", "token", "--token-file", str(token_file)]
    shown = subprocess.run([*cmd, "--quiet"], capture_output=True, text=True, check=True)
    assert shown.stdout.strip() == old
    rotated = subprocess.run([*cmd, "--rotate", "--quiet"], capture_output=True, text=True,
                             check=True).stdout.strip()
    assert rotated != old and token_file.read_text().strip() == rotated
    time.sleep(1.2)  # the server re-reads the file at most once a second
    assert "unauthorized" in transcribe_from(ns, srv.url, old, srv.fingerprint).stderr
    assert transcribe_from(ns, srv.url, rotated, srv.fingerprint).returncode == 0


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    paths = {"ca": folder / "ca.pem", "cert": folder / "cert.pem", "key": folder / "key.pem"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    cert.private_key_pem.write_to_path(str(paths["key"]))
    cert.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    for blob in cert.cert_chain_pems[1:]:
        blob.write_to_path(str(paths["cert"]), append=True)
    return paths


def test_tls_serves_https_and_wss(tls_files):
    client_ctx = ssl.create_default_context(cafile=str(tls_files["ca"]))
    srv = start_server("--noop-engine", "--tls-cert", str(tls_files["cert"]), "--tls-key",
                       str(tls_files["key"]), "--token", "tls-token", "--auth", "all",
                       ssl_context=client_ctx)
    try:
        assert srv.url.startswith("https://")
        args = [sys.executable, "-m", "desktop.cli", "transcribe", "--server", srv.url,
                "--token", "tls-token", "--format", "json", str(WAV)]
        trusted = subprocess.run(args, capture_output=True, text=True, timeout=120,
                                 env=dict(os.environ, SSL_CERT_FILE=str(tls_files["ca"])))
        assert trusted.returncode == 0, trusted.stderr
        assert json.loads(trusted.stdout)[0]["text"] == "speech"  # the no-op engine's word
        untrusted = subprocess.run(args, capture_output=True, text=True, timeout=120)
        assert untrusted.returncode == 1 and "certificate" in untrusted.stderr.lower()
        assert "Traceback" not in untrusted.stderr
    finally:
        srv.stop()


def test_unusable_certificate_is_a_one_line_error(tmp_path, tls_files):
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    for extra in (["--tls-cert", str(bad), "--tls-key", str(tls_files["key"])],
                  ["--tls-cert", str(tls_files["cert"])]):
        out = subprocess.run([sys.executable, "-m", "edge_server.cli", "--noop-engine",
                              "--no-mdns", "--port", "0", *extra],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and "Traceback" not in out.stderr
        assert out.stderr.startswith("earshot-server: error:")
