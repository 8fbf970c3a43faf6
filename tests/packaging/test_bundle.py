"""The laptop bundle (packaging/earshot.spec via `dev.py package`), built from the current
tree, copied outside the repo and run with a clean environment: it transcribes a dev file
headless through its embedded server and frozen worker processes, says its version, and
carries its models but no CUDA library. The slowest test of the suite (one PyInstaller
build, about a minute of CPU)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from edge_server.evaluation import normalize, word_error_rate
from tests import xdisplay
from tests.conftest import DEV, REPO, dev_rows
from tests.text_field_app import TextField

pytestmark = pytest.mark.timeout(1500)
BUDGET_BYTES = 350 * 1000 * 1000  # docs/packaging.md
ROW = dev_rows(("sherpa-test-wavs",))[0]  # 0.wav, 16 kHz


@pytest.fixture(scope="module")
def installed(bundle_build: Path, tmp_path_factory) -> Iterator[Path]:
    """The bundle copied to a folder outside the repo, as a user would unpack it."""
    target = tmp_path_factory.mktemp("unpacked") / "earshot"
    assert not target.is_relative_to(REPO)
    shutil.copytree(bundle_build, target, symlinks=True)
    yield target
    shutil.rmtree(target.parent, ignore_errors=True)


def clean_env(home: Path) -> dict[str, str]:
    """What `env -i` leaves, plus a fresh HOME/XDG and a headless Qt: nothing of the venv,
    no EARSHOT_MODELS_DIR, no PYTHONPATH."""
    home.mkdir(parents=True, exist_ok=True)
    return {"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_DATA_HOME": str(home / ".local/share"), "XDG_CACHE_HOME": str(home / ".cache"),
            "XDG_RUNTIME_DIR": str(home), "PATH": "/usr/bin:/bin", "QT_QPA_PLATFORM": "offscreen"}


def bundle_processes(folder: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["exe"]):
        exe = proc.info.get("exe") or ""
        if exe.startswith(str(folder)):
            found.append(proc)
    return found


def test_bundle_transcribes_a_file_headless_with_a_clean_environment(installed, tmp_path):
    out = tmp_path / "transcript.txt"
    run = subprocess.run(
        [str(installed / "earshot"), "--audio-file", str(DEV / ROW["path"]), "--fast",
         "--quit-when-done", "--transcript-out", str(out)],
        env=clean_env(tmp_path / "home"), cwd=tmp_path, capture_output=True, text=True,
        timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]
    text = out.read_text(encoding="utf-8")
    assert word_error_rate([ROW["transcript"]], [text]).wer <= 0.1, text
    # the models came from the bundle: nothing was fetched into the fresh user folders
    assert not (tmp_path / "home" / ".local/share/earshot/models").exists()
    assert bundle_processes(installed) == []  # the workers ended with the app


xserver = xdisplay.xserver


def test_bundle_types_a_dictation_into_the_focused_app_on_x11(installed, xserver, tmp_path):
    """The bundle's own pynput backend (picked by name at run time, so the spec must carry
    it) types the finals into another application's focused text field."""
    field = TextField(xserver, tmp_path / "field.txt", "Bundle - field")
    try:
        env = dict(clean_env(tmp_path / "home"), DISPLAY=xserver.display)
        env.pop("QT_QPA_PLATFORM")
        run = subprocess.run(
            [str(installed / "earshot"), "--audio-file", str(DEV / ROW["path"]), "--fast",
             "--quit-when-done", "--insert", "type"],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180)
        assert run.returncode == 0, run.stderr[-3000:]
        typed, deadline = field.text(), time.monotonic() + 10
        while time.monotonic() < deadline:  # the field writes what it got as it gets it
            time.sleep(0.5)
            if typed and field.text() == typed:
                break
            typed = field.text()
    finally:
        field.close()
    assert word_error_rate([ROW["transcript"]], [normalize(typed)]).wer <= 0.1, typed


def test_bundle_says_its_version_and_refuses_foreign_modules(installed, tmp_path):
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    env = clean_env(tmp_path / "home")
    run = subprocess.run([str(installed / "earshot"), "--version"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.strip() == f"earshot {version}"
    # the hidden `-m` dispatch (the upload decoder zygote) runs only Earshot's own children
    run = subprocess.run([str(installed / "earshot"), "-m", "os"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "not a module this bundle runs" in run.stderr


def test_bundle_carries_default_models_no_cuda_and_fits_its_budget(installed):
    from models.catalog import load_catalog

    catalog = load_catalog()
    models = installed / "_internal" / "models"
    for model_id in (catalog.default_asr, catalog.default_vad):
        assert any((models / model_id).iterdir()), model_id
    names = [p.name.lower() for p in installed.rglob("*")]
    cuda = [n for n in names if any(k in n for k in ("libcudart", "libcublas", "libcudnn",
                                                      "providers_cuda", "libnvinfer"))]
    assert cuda == []
    assert not any(n.startswith(("libqt6webengine", "libqt6quick")) for n in names)
    size = sum(p.stat().st_size for p in installed.rglob("*") if p.is_file()
               and not p.is_symlink())
    assert size <= BUDGET_BYTES, f"{size / 1e6:.0f} MB"
    for extra in ("earshot.desktop", "earshot.png", "install-desktop-entry.sh"):
        assert (installed / extra).is_file()


def test_desktop_entry_installs_with_the_bundle_path(installed, tmp_path):
    env = dict(clean_env(tmp_path / "home"))
    run = subprocess.run(["sh", str(installed / "install-desktop-entry.sh")], env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    entry = (tmp_path / "home" / ".local/share/applications/earshot.desktop").read_text()
    assert f'Exec="{installed}/earshot"' in entry
    icon = next(line for line in entry.splitlines() if line.startswith("Icon="))
    assert Path(icon.removeprefix("Icon=")).is_file()
    validate = shutil.which("desktop-file-validate")
    if validate:
        check = subprocess.run([validate, str(tmp_path / "home/.local/share/applications/"
                                              "earshot.desktop")], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
    assert os.access(installed / "earshot", os.X_OK)
