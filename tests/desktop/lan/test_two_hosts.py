"""Two hosts on a LAN, everything on its default settings: an office box and a laptop.

Namespaces joined by a bridge (tests/netns_lan.py): the box runs the installed
`earshot-server --host 0.0.0.0` with no other flag; the laptop runs the installed `earshot`
commands and the real app, with no mDNS pin. Covers: discovery within 2 s, pairing,
streaming over wss with the pinned certificate, an impostor copying the paired id refused
(and never sent the token), the identity surviving a restart, and a loopback-bound server
advertising nothing. A third namespace plays the impostor.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edge_server.evaluation import word_error_rate
from tests import netns_lan
from tests.conftest import DEV, dev_rows
from tests.netns_lan import BIN, NetnsLan, default_env

pytestmark = pytest.mark.skipif(not netns_lan.available(),
                                reason="needs root and iproute2 for network namespaces")
ROW = dev_rows(("librispeech-test-clean-kw",))[1]
WAV = DEV / ROW["path"]
PORT = 8765  # the default

BROWSE = """
import json, sys, time
from zeroconf import ServiceBrowser, ServiceStateChange, Zeroconf
zc = Zeroconf()  # every interface, as a user's zeroconf browser
seen = {}
def on_change(zeroconf, service_type, name, state_change):
    if state_change is ServiceStateChange.Added:
        seen.setdefault(name, time.monotonic() - started)
started = time.monotonic()
browser = ServiceBrowser(zc, "_earshot._tcp.local.", handlers=[on_change])
expect = int(sys.argv[2])  # stop early only once this many records are in
while len(seen) < expect and time.monotonic() - started < float(sys.argv[1]):
    time.sleep(0.01)
out = []
for name, after in seen.items():
    info = zc.get_service_info("_earshot._tcp.local.", name, timeout=2000)
    out.append({"name": name, "after_s": after, "port": info.port,
                "addresses": info.parsed_addresses(),
                "txt": {k.decode(): (v or b"").decode() for k, v in info.properties.items()}})
browser.cancel(); zc.close()
print(json.dumps(out))
"""

STATS = """
import json, ssl, sys, urllib.request
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
print(urllib.request.urlopen(sys.argv[1] + "/api/stats", context=ctx, timeout=10).read().decode())
"""


@pytest.fixture(scope="module")
def lan():
    network = NetnsLan()
    try:
        yield network, network.add_host("box"), network.add_host("laptop"), \
            network.add_host("spoof")
    finally:
        network.close()


@pytest.fixture(scope="module")
def box_env(tmp_path_factory):
    state = tmp_path_factory.mktemp("box")
    return default_env(EARSHOT_SERVER_STATE_DIR=str(state / "state"),
                       EARSHOT_SERVER_TOKEN_FILE=str(state / "token"))


def start_box(network, box, env):
    server = network.start(box, str(BIN / "earshot-server"), "--host", "0.0.0.0", env=env)
    server.wait_for("listening on https://0.0.0.0:8765")
    server.wait_for("advertising")
    return server


@pytest.fixture(scope="module")
def box_server(lan, box_env):
    network, box, _, _ = lan
    server = start_box(network, box, box_env)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def identity(box_env):
    out = subprocess.run([str(BIN / "earshot-server"), "identity", "--json"],
                                   capture_output=True, text=True, env=box_env, check=True)
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def token(box_env, box_server):
    out = subprocess.run([str(BIN / "earshot-server"), "token", "--quiet"],
                                   capture_output=True, text=True, env=box_env, check=True)
    return out.stdout.strip()


@pytest.fixture(scope="module")
def laptop_env(tmp_path_factory):
    home = tmp_path_factory.mktemp("laptop")
    return default_env(EARSHOT_CONFIG_DIR=str(home / "config"), XDG_DATA_HOME=str(home / "data"),
                       HOME=str(home))


def earshot(host, env, *args, timeout=180):
    return host.run(str(BIN / "earshot"), *args, env=env, timeout=timeout)


def browse_from(host, seconds=3.0, expect=1) -> list[dict]:
    """Browse from `host` until `expect` records are seen or `seconds` pass."""
    out = host.python("-c", BROWSE, str(seconds), str(expect))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_default_server_is_found_by_a_default_browser_within_2s(lan, box_server, identity):
    _, box, laptop, _ = lan
    found = browse_from(laptop)
    assert len(found) == 1, found
    record = found[0]
    assert record["after_s"] < 2.0
    assert record["addresses"] == [box.ip] and record["port"] == PORT
    assert record["txt"]["id"] == identity["server_id"]
    assert record["txt"]["fp"] == identity["fingerprint"] and record["txt"]["tls"] == "1"
    assert record["txt"]["token"] == "required"


@pytest.fixture(scope="module")
def paired(lan, box_server, token, laptop_env, identity):
    _, box, laptop, _ = lan
    listed = earshot(laptop, laptop_env, "servers")
    assert "needs pairing" in listed.stdout, listed.stdout + listed.stderr
    url = f"https://{box.ip}:{PORT}"
    for presented in ([], ["--token", "guess"]):  # the box's address, without its token
        refused = earshot(laptop, laptop_env, "transcribe", "--server", url, "--fingerprint",
                          identity["fingerprint"], *presented, str(WAV))
        assert refused.returncode == 1 and "unauthorized" in refused.stderr, refused.stderr
    served = earshot(laptop, laptop_env, "transcribe", "--server", url, "--fingerprint",
                     identity["fingerprint"], "--token", token, str(WAV))
    assert served.returncode == 0 and served.stdout.strip(), served.stderr
    name = listed.stdout.split("\t")[0]
    wrong = earshot(laptop, laptop_env, "pair", name, "--token", "not-the-token")
    assert wrong.returncode == 1 and "token does not match" in wrong.stderr, wrong.stderr
    ok = earshot(laptop, laptop_env, "pair", name, "--token", token)
    assert ok.returncode == 0, ok.stderr
    assert identity["server_id"] in ok.stdout
    assert "No system keyring found" in ok.stderr  # none here: the 0600 file, and it says so
    return name


def transcribe_auto(laptop, env):
    return earshot(laptop, env, "transcribe", "--server", "auto", "--format", "json", str(WAV))


def test_paired_laptop_streams_over_wss_with_the_pinned_certificate(lan, paired, laptop_env,
                                                                     box_server):
    _, _, laptop, _ = lan
    listed = earshot(laptop, laptop_env, "servers")
    assert "\tpaired" in listed.stdout, listed.stdout
    out = transcribe_auto(laptop, laptop_env)
    assert out.returncode == 0, out.stderr
    text = json.loads(out.stdout)[0]["text"]
    assert word_error_rate([ROW["transcript"]], [text]).wer < 0.2, text
    plain = laptop.python("-c", "import urllib.request, sys\n"
                          "try: urllib.request.urlopen(sys.argv[1], timeout=10)\n"
                          "except Exception as e: print(e.code)",
                          f"http://{lan[1].ip}:{PORT}/healthz")
    assert plain.stdout.strip() == "403"  # no plain http from another host


def test_the_real_app_dictates_to_the_paired_box_on_default_settings(lan, paired, laptop_env,
                                                                      tmp_path):
    _, box, laptop, _ = lan
    stats_url = f"https://{box.ip}:{PORT}"
    before = json.loads(laptop.python("-c", STATS, stats_url).stdout)
    out_file = tmp_path / "app.txt"
    run = earshot(laptop, dict(laptop_env, QT_QPA_PLATFORM="offscreen"), "--audio-file",
                  str(WAV), "--fast", "--quit-when-done", "--transcript-out", str(out_file))
    assert run.returncode == 0, run.stderr
    text = out_file.read_text()
    assert word_error_rate([ROW["transcript"]], [text]).wer < 0.2, text
    after = json.loads(laptop.python("-c", STATS, stats_url).stdout)
    started = after["totals"]["sessions_started"] - before["totals"]["sessions_started"]
    assert started >= 1, "the app did not use the paired box"


def spoof(network, host, tmp_path, server_id, fp, name):
    log = tmp_path / f"spoof-{fp[:4]}.jsonl"
    log.touch()
    proc = network.start(host, sys.executable, "-m", "tests.spoof_server", str(log),
                         str(tmp_path / f"spoof-state-{fp[:4]}"), server_id, fp, name, "999")
    proc.wait_for("spoof advertising")
    return proc, log


@pytest.mark.parametrize("advertised", ["own", "real"])
def test_an_impostor_copying_the_paired_id_is_refused_and_never_gets_the_token(
        lan, paired, laptop_env, identity, token, tmp_path, advertised):
    network, _, laptop, spoof_host = lan
    fp = "own" if advertised == "own" else identity["fingerprint"]
    proc, log = spoof(network, spoof_host, tmp_path, identity["server_id"], fp, paired)
    try:
        found = browse_from(laptop, expect=2)
        assert len(found) == 2, found  # the impostor is on the LAN, and ranks first (GPU, 999)
        listed = earshot(laptop, laptop_env, "servers")
        out = transcribe_auto(laptop, laptop_env)
    finally:
        proc.stop()
    assert out.returncode == 0, out.stderr  # the real box served it
    text = json.loads(out.stdout)[0]["text"]
    assert word_error_rate([ROW["transcript"]], [text]).wer < 0.2
    if advertised == "own":  # a different fingerprint in the record: refused on sight
        assert "mismatch" in listed.stdout
        assert "Refused" in listed.stderr and "Refused" in out.stderr
    else:  # the record copies the pin, but the impostor cannot present the certificate
        assert "Refused" in out.stderr and "presents a certificate other" in out.stderr
    requests = [json.loads(line) for line in log.read_text().splitlines()]
    assert requests == []  # a pinned TLS handshake fails before any request is sent
    assert token not in log.read_text()


def test_restart_keeps_the_id_and_fingerprint(lan, paired, box_env, box_server, identity,
                                              laptop_env):
    network, box, laptop, _ = lan
    assert box_server.stop() == 0
    again = start_box(network, box, box_env)
    try:
        record = browse_from(laptop)[0]
        assert record["txt"]["id"] == identity["server_id"]
        assert record["txt"]["fp"] == identity["fingerprint"]
        out = transcribe_auto(laptop, laptop_env)  # the old pin still holds
        assert out.returncode == 0, out.stderr
    finally:
        again.stop()


def test_a_loopback_bound_server_advertises_nothing_and_says_so(lan, tmp_path):
    network, box, laptop, _ = lan
    env = default_env(EARSHOT_SERVER_STATE_DIR=str(tmp_path / "state"),
                      EARSHOT_SERVER_TOKEN_FILE=str(tmp_path / "token"))
    server = network.start(box, str(BIN / "earshot-server"), "--noop-engine", env=env)
    try:
        line = server.wait_for("not advertising on the LAN")
        assert "127.0.0.1" in line and "--host 0.0.0.0" in line
        assert browse_from(laptop, seconds=2.0) == []
    finally:
        server.stop()
