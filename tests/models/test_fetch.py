"""Fetching: extraction + verification from a wheel, and one real pip download from PyPI."""

import subprocess
import sys
import zipfile

import pytest

from models.catalog import load_catalog
from models.fetch import FetchError, fetch_model
from models.store import check_files
from tests.conftest import SHARED


def make_wheel(path, spec, tamper: str | None = None):
    """A zip with the catalog's member paths holding the shared model files."""
    with zipfile.ZipFile(path, "w") as zf:
        for f in spec.files:
            data = (SHARED / "models" / spec.id / f.name).read_bytes()
            if f.name == tamper:
                data = data[:-1] + bytes([data[-1] ^ 1])
            zf.writestr(f.member, data)
    return path


def test_fetch_from_wheel_extracts_and_verifies(tmp_path):
    spec = load_catalog().get("moonshine-tiny-en")
    wheel = make_wheel(tmp_path / "m.whl", spec)
    messages = []
    folder = fetch_model(spec.id, models_dir=tmp_path / "models", wheel=wheel,
                         progress=messages.append)
    assert check_files(spec, folder) == []
    assert any("sha256 ok" in m for m in messages)
    assert not list(folder.glob(".*.part"))


def test_tampered_wheel_is_refused_and_nothing_installed(tmp_path):
    spec = load_catalog().get("moonshine-tiny-en")
    wheel = make_wheel(tmp_path / "m.whl", spec, tamper="tokenizer.bin")
    with pytest.raises(FetchError, match=r"tokenizer\.bin .* does not match the catalog"):
        fetch_model(spec.id, models_dir=tmp_path / "models", wheel=wheel, progress=print)
    assert not (tmp_path / "models" / spec.id / "tokenizer.bin").exists()


def test_not_a_wheel(tmp_path):
    bad = tmp_path / "bad.whl"
    bad.write_text("hello")
    with pytest.raises(FetchError, match="not a readable wheel"):
        fetch_model("silero-vad", models_dir=tmp_path, wheel=bad, progress=print)


def test_cli_fetch_downloads_silero_vad_from_pypi(tmp_path):
    """The real path: pip download from the registry, extract, verify (about 11 MB)."""
    env_dir = tmp_path / "models"
    out = subprocess.run(
        [sys.executable, "-m", "desktop.cli", "models", "fetch", "silero-vad",
         "--dir", str(env_dir)],
        capture_output=True, text=True, timeout=240,
    )
    assert out.returncode == 0, out.stderr + out.stdout
    assert "silero_vad.onnx: 2.3 MB, sha256 ok" in out.stdout
    assert check_files(load_catalog().get("silero-vad"), env_dir / "silero-vad") == []


def test_default_model_fetches_from_its_platform_pinned_wheel(tmp_path):
    """moonshine-voice ships platform wheels: the catalog pins one; pip must find it (56 MB)."""
    out = subprocess.run(
        [sys.executable, "-m", "desktop.cli", "models", "fetch", "moonshine-tiny-en",
         "--dir", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr + out.stdout
    spec = load_catalog().get("moonshine-tiny-en")
    assert check_files(spec, tmp_path / "moonshine-tiny-en") == []
