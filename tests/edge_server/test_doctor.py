"""`earshot-server doctor`, run as the installed command on this (CPU) machine: its report
is checked against the truth (onnxruntime's own answers, the identity's fingerprint, a
port we hold, a model folder we emptied), and its exit status against what is broken."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from edge_server.lan.identity import load_or_create_identity

SERVER = Path(sys.executable).parent / "earshot-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def box(tmp_path):
    """A state folder with an identity and an owner-only token file, as a started server
    leaves them."""
    state = tmp_path / "state"
    identity = load_or_create_identity(state)
    token = tmp_path / "server-token"
    token.write_text("s3cret-token\n")
    token.chmod(0o600)
    env = dict(os.environ, EARSHOT_SERVER_STATE_DIR=str(state),
               EARSHOT_SERVER_TOKEN_FILE=str(token))
    return env, identity, token


def doctor(env: dict, *args: str) -> tuple[int, dict]:
    run = subprocess.run([str(SERVER), "doctor", "--json", *args], env=env,
                         capture_output=True, text=True, timeout=240)
    assert run.stdout.strip(), run.stderr[-2000:]
    return run.returncode, json.loads(run.stdout)


def by_name(report: dict) -> dict[str, dict]:
    return {c["name"]: c for c in report["checks"]}


def test_doctor_tells_the_truth_about_this_cpu_box(box):
    import onnxruntime

    from edge_server.engine.runtime import installed_flavours
    from models.catalog import load_catalog

    env, identity, token = box
    port = free_port()
    code, report = doctor(env, "--port", str(port), "--device", "cpu", "--threads", "1")
    checks = by_name(report)
    assert code == 0 and report["ok"], checks
    ort = checks["onnxruntime"]
    assert ort["details"]["flavours"] == installed_flavours() == ["onnxruntime"]
    assert ort["details"]["providers"] == onnxruntime.get_available_providers()
    assert "no CUDA" in ort["summary"]
    catalog = load_catalog()
    for model_id in (catalog.default_asr, catalog.default_vad):
        assert checks[f"model {model_id}"]["status"] == "ok"
    engine = checks[f"engine {catalog.default_asr}"]
    assert engine["status"] == "ok" and engine["details"]["device"] == "cpu"
    assert "CUDA" not in engine["summary"].split(":")[0]
    assert checks["port http"]["summary"].endswith(f"127.0.0.1:{port} is free")
    assert checks["tls"]["details"]["fingerprint"] == identity.fingerprint
    assert checks["tls"]["details"]["server_id"] == identity.server_id
    assert checks["token"]["details"] == {"path": str(token), "auth": "remote", "mode": "0600"}


def test_doctor_fails_for_a_missing_model_and_a_taken_port(box, tmp_path):
    env, _identity, _token = box
    env["EARSHOT_MODELS_DIR"] = str(tmp_path / "no-models")
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        code, report = doctor(env, "--port", str(port), "--no-engine")
    checks = by_name(report)
    assert code == 1 and not report["ok"]
    assert checks["model silero-vad"]["status"] == "fail"
    assert "earshot models fetch" in checks["model silero-vad"]["summary"]
    port_check = checks["port http"]
    assert port_check["status"] == "fail" and "another program" in port_check["summary"]
    text = subprocess.run([str(SERVER), "doctor", "--no-engine", "--port", "0"], env=env,
                          capture_output=True, text=True, timeout=120).stdout
    assert "[FAIL] model silero-vad" in text and "problem(s) to fix" in text


def test_doctor_warns_about_an_open_token_and_fails_a_damaged_certificate(box):
    env, identity, token = box
    token.chmod(0o644)
    identity.cert_path.write_text("-----BEGIN CERTIFICATE-----\nnot one\n")
    code, report = doctor(env, "--no-engine", "--port", "0")
    checks = by_name(report)
    assert checks["token"]["status"] == "warn" and "chmod 600" in checks["token"]["summary"]
    assert checks["tls"]["status"] == "fail" and "--rotate-identity" in checks["tls"]["summary"]
    assert code == 1


def test_doctor_reads_the_lan_settings(box):
    env, _identity, _token = box
    code, report = doctor(env, "--no-engine", "--port", "0", "--host", "0.0.0.0",
                          "--mdns-interfaces", "127.0.0.1")
    mdns = by_name(report)["mdns"]
    assert code == 0 and mdns["status"] == "ok" and mdns["details"]["advertised"] == ["127.0.0.1"]
    _code, report = doctor(env, "--no-engine", "--port", "0")  # loopback: nothing to announce
    assert by_name(report)["mdns"]["status"] == "warn"
