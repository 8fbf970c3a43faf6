"""Fetching: extraction + verification from a wheel, preparation of the forms, and real
pip downloads from PyPI."""

import dataclasses
import os
import subprocess
import sys
import threading
import zipfile

import pytest

from models import fetch
from models.catalog import Catalog, load_catalog
from models.fetch import FetchError, fetch_model
from models.store import check_files, require_form, verify_file
from tests.models.conftest import copy_model, shipped_dir


def make_wheel(path, spec, tamper: str | None = None):
    """A zip with the catalog's member paths holding the model files the store finds."""
    folder = shipped_dir(spec.id)
    with zipfile.ZipFile(path, "w") as zf:
        for f in spec.files:
            data = (folder / f.name).read_bytes()
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
    for f in spec.prepared:  # the forms were prepared and checked against the catalog
        assert verify_file(f, folder / f.name) is None
        assert any(m.startswith(f"  {f.name}: preparing from {f.source}") for m in messages)


def test_fetch_prepares_into_the_first_folder_and_copies_nothing_shipped(
        tmp_path, monkeypatch):
    cache, ro = tmp_path / "cache", tmp_path / "ro"
    shipped = copy_model("moonshine-tiny-en", ro)
    for f in shipped.iterdir():
        f.chmod(0o444)
    monkeypatch.setenv("EARSHOT_MODELS_DIR", os.pathsep.join([str(cache), str(ro)]))
    messages = []
    folder = fetch_model("moonshine-tiny-en", progress=messages.append,  # no download
                         wheel=lambda: pytest.fail("the wheel is not needed"))
    assert folder == cache / "moonshine-tiny-en"
    spec = load_catalog().get("moonshine-tiny-en")
    assert sorted(p.name for p in folder.iterdir()) == sorted(f.name for f in spec.prepared)
    assert "shipped files already installed" in messages[0]
    form = require_form("moonshine-tiny-en", "float")
    assert form.paths["decoder"].parent == folder and form.paths["tokenizer"].parent == shipped
    messages.clear()
    fetch_model("moonshine-tiny-en", progress=messages.append)  # all there: nothing to do
    assert not any("preparing" in m for m in messages)


def test_prepared_file_unlike_the_catalog_is_removed(tmp_path, monkeypatch):
    catalog = load_catalog()
    spec = catalog.get("moonshine-tiny-en")
    wrong = dataclasses.replace(spec.prepared[0], sha256="0" * 64)
    bad = dataclasses.replace(spec, prepared=(wrong, *spec.prepared[1:]))
    monkeypatch.setattr(fetch, "load_catalog", lambda: Catalog(
        {**catalog.models, bad.id: bad}, catalog.default_asr, catalog.default_vad))
    copy_model("moonshine-tiny-en", tmp_path / "ro")
    monkeypatch.setenv("EARSHOT_MODELS_DIR", os.pathsep.join(
        [str(tmp_path / "cache"), str(tmp_path / "ro")]))
    with pytest.raises(FetchError, match=rf"prepared {wrong.name} does not match the catalog "
                       r"\(checksum mismatch\); removed it"):
        fetch_model("moonshine-tiny-en", progress=print)
    assert not (tmp_path / "cache" / "moonshine-tiny-en" / wrong.name).exists()
    assert not list((tmp_path / "cache" / "moonshine-tiny-en").glob(".*.part"))


def test_cli_models_list_shows_forms_and_their_state(tmp_path, prepared_dir):
    copy_model("moonshine-tiny-en", tmp_path, prepared_dir)
    (tmp_path / "moonshine-tiny-en" / "decoder_model_merged.float.onnx").unlink()
    env = {**os.environ, "EARSHOT_MODELS_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "desktop.cli", "models", "list"],
                         capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    line = next(x for x in out.stdout.splitlines()
                if x.startswith("  forms:") and "int8 [cpu] ready" in x)
    assert "float [cpu, cuda] missing: decoder_model_merged.float.onnx" in line


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


# ---- through a package index, without pip (models.download), as the packaged app does ------
def index_with(tmp_path, monkeypatch, spec, tamper: str | None = None):
    """A started PackageIndex serving `spec`'s wheel (real model files), set as the index."""
    from tests.package_index import PackageIndex, build_wheel

    wheel = build_wheel(tmp_path / "wheels", spec)
    if tamper:
        wheel = make_wheel(wheel, spec, tamper=tamper)  # same name, one member altered
    index = PackageIndex().__enter__()
    index.add(wheel)
    monkeypatch.setenv("EARSHOT_PACKAGE_INDEX", index.url)
    return index


@pytest.fixture
def silero_index(tmp_path, monkeypatch):
    index = index_with(tmp_path, monkeypatch, load_catalog().get("silero-vad"))
    yield index
    index.__exit__(None, None, None)


def test_fetch_through_the_index_in_a_frozen_app(tmp_path, monkeypatch, silero_index):
    monkeypatch.setattr(sys, "frozen", True, raising=False)  # no pip there: not needed
    stages, seen, messages = [], [], []
    folder = fetch_model("silero-vad", models_dir=tmp_path / "models", progress=messages.append,
                         on_stage=stages.append, on_bytes=lambda d, t: seen.append((d, t)))
    assert check_files(load_catalog().get("silero-vad"), folder) == []
    assert stages == ["download", "extract"]
    assert seen[-1][0] == seen[-1][1] > 2_000_000
    assert messages[0].startswith("downloading silero_vad-6.2.3-py3-none-any.whl (")
    assert "  silero_vad.onnx: 2.3 MB, sha256 ok" in messages
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["silero-vad"]


def test_cancelled_fetch_resumes_from_its_part_file(tmp_path, silero_index):
    from models.download import DownloadCancelled

    cancel = threading.Event()

    def on_bytes(done, _total):
        if done >= 300_000:
            cancel.set()

    models = tmp_path / "models"
    with pytest.raises(DownloadCancelled):
        fetch_model("silero-vad", models_dir=models, progress=print, on_bytes=on_bytes,
                    cancel=cancel)
    parts = list((models / ".downloads").glob("*.whl.part"))
    assert len(parts) == 1
    kept = parts[0].stat().st_size
    assert kept >= 300_000
    assert not (models / "silero-vad" / "silero_vad.onnx").exists()
    fetch_model("silero-vad", models_dir=models, progress=print, cancel=threading.Event())
    ranges = [r for p, r in silero_index.requests if p.startswith("/files/")]
    assert ranges == [None, f"bytes={kept}-"]
    assert check_files(load_catalog().get("silero-vad"), models / "silero-vad") == []
    assert not (models / ".downloads").exists()


def test_offline_fetch_says_so_and_where_files_can_be_copied(tmp_path, monkeypatch):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("EARSHOT_PACKAGE_INDEX", f"http://127.0.0.1:{port}/simple")
    target = tmp_path / "models" / "silero-vad"
    with pytest.raises(FetchError) as info:
        fetch_model("silero-vad", models_dir=tmp_path / "models", progress=print)
    assert str(info.value) == (f"Could not reach 127.0.0.1:{port} (no internet connection?). "
                               f"The model's files can also be copied into {target} by hand "
                               "(see docs/models.md).")
    assert info.value.offline


def test_wheel_from_the_index_unlike_the_catalog_is_refused(tmp_path, monkeypatch):
    spec = load_catalog().get("silero-vad")
    index = index_with(tmp_path, monkeypatch, spec, tamper="silero_vad.onnx")
    try:
        with pytest.raises(FetchError, match=r"silero_vad\.onnx in .* does not match the "
                           "catalog"):
            fetch_model(spec.id, models_dir=tmp_path / "models", progress=print)
    finally:
        index.__exit__(None, None, None)
    assert not (tmp_path / "models" / spec.id / "silero_vad.onnx").exists()
    assert not (tmp_path / "models" / ".downloads").exists()  # the bad wheel is not kept
