#!/usr/bin/env python3
"""Earshot's quick start: `python3 dev.py app` and `python3 dev.py test`.

Both create (or update) a virtual environment in .venv with the CPU engine, install the
system libraries the chosen command needs (Debian/Ubuntu: apt-get, when run as root or
with password-less sudo; otherwise it prints the command to run), make sure the default
models are there, and then:
  app   starts the desktop app on its embedded local server (default model);
  test  runs ruff and the whole pytest suite (extra arguments go to pytest).
Needs only Python 3.11+ and the package registries. Standard library only.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
STAMP = VENV / ".earshot-install"
SHARED_MODELS = ROOT.parent / "shared" / "models"

# shared library -> Debian package, per command
SYSTEM_LIBS = {
    "app": {"libportaudio.so.2": "libportaudio2", "libEGL.so.1": "libegl1",
            "libxkbcommon.so.0": "libxkbcommon0", "libfontconfig.so.1": "libfontconfig1",
            "libdbus-1.so.3": "libdbus-1-3", "libGL.so.1": "libgl1",
            "libxcb-cursor.so.0": "libxcb-cursor0", "libxcb-icccm.so.4": "libxcb-icccm4",
            "libxcb-keysyms.so.1": "libxcb-keysyms1"},
    "test": {"libportaudio.so.2": "libportaudio2", "libEGL.so.1": "libegl1",
             "libxkbcommon.so.0": "libxkbcommon0", "libfontconfig.so.1": "libfontconfig1",
             "libdbus-1.so.3": "libdbus-1-3", "libGL.so.1": "libgl1"},
}
# Programs the tests drive: Debian's Chromium for the dashboard test (Playwright uses it
# instead of downloading a browser), iproute2 for the network-namespace auth test.
SYSTEM_PROGRAMS = {"app": {}, "test": {"chromium": "chromium", "ip": "iproute2"}}
EXTRAS = {"app": "cpu,desktop", "test": "cpu,desktop,test"}


def say(msg: str) -> None:
    print(f"[dev.py] {msg}", flush=True)


def venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def run(cmd: list[str], **kw) -> None:
    subprocess.run(cmd, check=True, **kw)


def missing_libraries(command: str) -> list[str]:
    if not sys.platform.startswith("linux") or not shutil.which("ldconfig"):
        return []
    known = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
    missing = {pkg for lib, pkg in SYSTEM_LIBS[command].items() if lib not in known}
    missing |= {pkg for prog, pkg in SYSTEM_PROGRAMS[command].items() if not shutil.which(prog)}
    return sorted(missing)


def ensure_system_packages(command: str) -> None:
    packages = missing_libraries(command)
    if not packages:
        return
    apt = shutil.which("apt-get")
    prefix: list[str] | None = None
    if apt and os.geteuid() == 0:
        prefix = []
    elif apt and shutil.which("sudo") and subprocess.run(
            ["sudo", "-n", "true"], capture_output=True).returncode == 0:
        prefix = ["sudo", "-n"]
    if prefix is None:
        say(f"missing system libraries; please install: {' '.join(packages)} "
            f"(Debian/Ubuntu: sudo apt-get install -y {' '.join(packages)})")
        return
    say(f"installing system packages: {' '.join(packages)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run([*prefix, "apt-get", "update", "-qq"], env=env)
    run([*prefix, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
        env=env)


def ensure_venv(extras: str) -> Path:
    if not venv_python().exists():
        say(f"creating virtual environment in {VENV}")
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + extras.encode()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == want:
        return venv_python()
    py = str(venv_python())
    say(f"installing earshot[{extras}] (first run downloads the dependencies)")
    run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--upgrade", "pip"])
    run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-e",
         f"{ROOT}[{extras}]"])
    STAMP.write_text(want)
    return venv_python()


def ensure_models(py: Path, env: dict) -> None:
    if "EARSHOT_MODELS_DIR" not in env and (SHARED_MODELS / "moonshine-tiny-en").is_dir():
        env["EARSHOT_MODELS_DIR"] = str(SHARED_MODELS)
    fetch = subprocess.run([str(py), "-m", "desktop.cli", "models", "fetch"], env=env, cwd=ROOT)
    if fetch.returncode:
        sys.exit("[dev.py] the default models could not be fetched (see the message above)")


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("app", "test"):
        print(__doc__)
        return 2
    command, rest = argv[0], argv[1:]
    ensure_system_packages(command)
    py = ensure_venv(EXTRAS[command])
    env = dict(os.environ)
    if command == "app":
        ensure_models(py, env)
        return subprocess.run([str(py), "-m", "desktop.cli", *rest], env=env, cwd=ROOT).returncode
    env.setdefault("QT_QPA_PLATFORM", "offscreen")
    if "EARSHOT_MODELS_DIR" not in env and not SHARED_MODELS.is_dir():
        ensure_models(py, env)
    say("ruff check")
    lint = subprocess.run([str(py), "-m", "ruff", "check", str(ROOT)], cwd=ROOT)
    if lint.returncode:
        return lint.returncode
    say("pytest")
    return subprocess.run([str(py), "-m", "pytest", *rest], env=env, cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
