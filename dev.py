#!/usr/bin/env python3
"""Earshot's quick start: `python3 dev.py app`, `python3 dev.py test`, `python3 dev.py package`.

Each creates (or updates) a virtual environment in .venv with the CPU engine, installs the
system libraries the chosen command needs (Debian/Ubuntu: apt-get, when run as root or
with password-less sudo; otherwise it prints the command to run), and then:
  app      fetches the default models (user data folder) and starts the desktop app on its
           embedded local server;
  test     runs ruff and the whole pytest suite on 2-4 processes (pytest-xdist); extra
           arguments go to pytest, which then runs as they say; the test
           session itself fetches what it needs into .cache/ when ../shared is not beside
           the repo (tests/inputs.py), and nothing when it is;
  package  builds the laptop bundle with PyInstaller (packaging/earshot.spec):
           dist/earshot/earshot and dist/earshot-VERSION-PLATFORM.tar.gz (docs/packaging.md).
Needs only Python 3.11+ and the package registries. Standard library only.
EARSHOT_DEV_NO_SETUP=1 skips the setup and uses the running Python (the bundle test runs
`python dev.py package` from inside the test venv that way).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
STAMP = VENV / ".earshot-install"
SHARED_MODELS = Path(os.environ.get("EARSHOT_SHARED", ROOT.parent / "shared")) / "models"
CACHE_MODELS = ROOT / ".cache" / "models"

# shared library -> Debian package, per command
SYSTEM_LIBS = {
    "app": {"libportaudio.so.2": "libportaudio2", "libEGL.so.1": "libegl1",
            "libxkbcommon.so.0": "libxkbcommon0", "libfontconfig.so.1": "libfontconfig1",
            "libdbus-1.so.3": "libdbus-1-3", "libGL.so.1": "libgl1",
            "libxcb-cursor.so.0": "libxcb-cursor0", "libxcb-icccm.so.4": "libxcb-icccm4",
            "libxcb-keysyms.so.1": "libxcb-keysyms1"},
    "test": {"libportaudio.so.2": "libportaudio2", "libEGL.so.1": "libegl1",
             "libxkbcommon.so.0": "libxkbcommon0", "libfontconfig.so.1": "libfontconfig1",
             "libdbus-1.so.3": "libdbus-1-3", "libGL.so.1": "libgl1",
             # Qt's xcb platform plugin under Xvfb (the insertion and hotkey tests)
             "libxcb-cursor.so.0": "libxcb-cursor0", "libxcb-icccm.so.4": "libxcb-icccm4",
             "libxcb-keysyms.so.1": "libxcb-keysyms1", "libxcb-shape.so.0": "libxcb-shape0",
             "libxcb-render-util.so.0": "libxcb-render-util0",
             "libxcb-image.so.0": "libxcb-image0", "libxcb-randr.so.0": "libxcb-randr0",
             "libxcb-xkb.so.1": "libxcb-xkb1", "libxkbcommon-x11.so.0": "libxkbcommon-x11-0",
             "libxcb-util.so.1": "libxcb-util1", "libxcb-render.so.0": "libxcb-render0",
             "libxcb-shm.so.0": "libxcb-shm0", "libxcb-sync.so.1": "libxcb-sync1",
             "libxcb-xfixes.so.0": "libxcb-xfixes0", "libX11-xcb.so.1": "libx11-xcb1"},
}
SYSTEM_LIBS["package"] = SYSTEM_LIBS["app"]

# Programs the tests drive: Debian's Chromium for the dashboard test (Playwright uses it
# instead of downloading a browser), iproute2 for the network-namespace auth test,
# systemd-analyze and desktop-file-validate for the packaging checks; PyInstaller reads
# libraries with objdump (binutils, which also has the `strip` the bundle uses).
SYSTEM_PROGRAMS = {"app": {},
                   "test": {"chromium": "chromium", "ip": "iproute2",
                            "systemd-analyze": "systemd", "objdump": "binutils",
                            "desktop-file-validate": "desktop-file-utils",
                            # a real X server for the text-insertion / hotkey tests
                            "Xvfb": "xvfb", "xdotool": "xdotool",
                            # a private session bus for the Wayland portal tests
                            "dbus-daemon": "dbus-daemon",
                            "redis-server": "redis-server"},  # tests/redis_server.py
                   "package": {"objdump": "binutils"}}
# pynput (global hotkey, typing at the cursor) needs evdev on Linux, which PyPI has only as
# source: building it needs a C compiler, the kernel's input headers and Python's headers
BUILD_TOOLS = {"gcc": "gcc"}
BUILD_HEADERS = {"/usr/include/linux/input.h": "linux-libc-dev"}
for _programs in SYSTEM_PROGRAMS.values():
    _programs.update(BUILD_TOOLS)
# test includes `package`: the bundle smoke test (tests/packaging) builds the bundle
EXTRAS = {"app": "cpu,desktop", "test": "cpu,desktop,test,package",
          "package": "cpu,desktop,test,package"}


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
    missing |= {pkg for path, pkg in BUILD_HEADERS.items() if not Path(path).exists()}
    python_h = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not python_h.exists():  # a distribution's Python: its -dev package has the headers
        missing.add(f"python{sys.version_info.major}.{sys.version_info.minor}-dev")
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


def store_takes_lists(py: Path) -> bool:
    """Whether the installed model store reads EARSHOT_MODELS_DIR as a list of folders."""
    probe = "from models.store import search_dirs; print(len(search_dirs()))"
    env = dict(os.environ, EARSHOT_MODELS_DIR=os.pathsep.join(("/probe-a", "/probe-b")))
    out = subprocess.run([str(py), "-c", probe], env=env, cwd=ROOT, capture_output=True,
                         text=True)
    return out.returncode == 0 and out.stdout.strip() == "2"


def repo_models_dir(py: Path) -> str:
    """EARSHOT_MODELS_DIR for `package`: .cache/models (first, written by fetches), then
    ../shared/models when it is beside the repo (read only; nothing downloaded for what it
    holds). With a store that reads a single folder: ../shared/models if present."""
    if not (SHARED_MODELS / "moonshine-tiny-en").is_dir():
        return str(CACHE_MODELS)
    if store_takes_lists(py):
        return os.pathsep.join((str(CACHE_MODELS), str(SHARED_MODELS)))
    return str(SHARED_MODELS)


def ensure_models(py: Path, env: dict) -> None:
    """Fetch (and prepare) the default models: with ../shared beside the repo into
    .cache/models next to it (see repo_models_dir), else into the user data folder."""
    if "EARSHOT_MODELS_DIR" not in env and (SHARED_MODELS / "moonshine-tiny-en").is_dir():
        env["EARSHOT_MODELS_DIR"] = repo_models_dir(py)
    fetch = subprocess.run([str(py), "-m", "desktop.cli", "models", "fetch"], env=env, cwd=ROOT)
    if fetch.returncode:
        sys.exit("[dev.py] the default models could not be fetched (see the message above)")


def package(py: Path, env: dict, rest: list[str]) -> int:
    """Build dist/earshot (PyInstaller, one folder) and its .tar.gz; return the exit code.

    `--distpath D` / `--workpath W` in `rest` change where the bundle and the build files go
    (defaults: dist/, build/pyinstaller/)."""
    import argparse
    import platform
    import tarfile

    ap = argparse.ArgumentParser(prog="dev.py package")
    ap.add_argument("--distpath", type=Path, default=ROOT / "dist")
    ap.add_argument("--workpath", type=Path, default=ROOT / "build" / "pyinstaller")
    ap.add_argument("--no-tar", action="store_true", help="skip the .tar.gz")
    args = ap.parse_args(rest)
    env.setdefault("EARSHOT_MODELS_DIR", repo_models_dir(py))
    say(f"default models (EARSHOT_MODELS_DIR={env['EARSHOT_MODELS_DIR']})")
    fetch = subprocess.run([str(py), "-m", "desktop.cli", "models", "fetch"], env=env, cwd=ROOT)
    if fetch.returncode:
        say("the default models could not be fetched (see the message above)")
        return fetch.returncode
    say(f"PyInstaller -> {args.distpath / 'earshot'}")
    build = subprocess.run(
        [str(py), "-m", "PyInstaller", "--noconfirm", "--log-level", "WARN",
         "--distpath", str(args.distpath), "--workpath", str(args.workpath),
         str(ROOT / "packaging" / "earshot.spec")], env=env, cwd=ROOT)
    if build.returncode:
        return build.returncode
    bundle = args.distpath / "earshot"
    for extra in ("linux/earshot.desktop", "linux/install-desktop-entry.sh",
                  "icons/earshot.png", "icons/earshot.svg"):
        if sys.platform.startswith("linux") or not extra.startswith("linux/"):
            shutil.copy2(ROOT / "packaging" / extra, bundle / Path(extra).name)
    if args.no_tar:
        return 0
    exe = bundle / ("earshot.exe" if os.name == "nt" else "earshot")
    said = subprocess.run([str(exe), "--version"], capture_output=True, text=True, env=env)
    if said.returncode != 0:
        say(f"the bundle does not start: {said.stderr.strip()[-2000:]}")
        return 1
    version = said.stdout.split()[-1]
    arch = platform.machine().lower().replace("amd64", "x86_64")
    tar = args.distpath / f"earshot-{version}-{sys.platform}-{arch}.tar.gz"
    with tarfile.open(tar, "w:gz") as out:
        out.add(bundle, arcname="earshot")
    say(f"built {bundle / 'earshot'} and {tar}")
    return 0


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("app", "test", "package"):
        print(__doc__)
        return 2
    command, rest = argv[0], argv[1:]
    if os.environ.get("EARSHOT_DEV_NO_SETUP") == "1":  # already set up (tests/packaging)
        py = Path(sys.executable)
    else:
        ensure_system_packages(command)
        py = ensure_venv(EXTRAS[command])
    env = dict(os.environ)
    if command == "app":
        ensure_models(py, env)
        return subprocess.run([str(py), "-m", "desktop.cli", *rest], env=env, cwd=ROOT).returncode
    if command == "package":
        return package(py, env, rest)
    env.setdefault("QT_QPA_PLATFORM", "offscreen")
    say("ruff check")
    lint = subprocess.run([str(py), "-m", "ruff", "check", str(ROOT)], cwd=ROOT)
    if lint.returncode:
        return lint.returncode
    say("pytest")
    return subprocess.run([str(py), "-m", "pytest", *pytest_workers(rest), *rest], env=env,
                          cwd=ROOT).returncode


def pytest_workers(rest: list[str]) -> list[str]:
    """pytest-xdist options for a whole-suite run: one process per core, 2 to 4 (most tests
    wait on servers and subprocesses, so two processes halve the time on 2 cores); tests
    that browse mDNS on loopback share one process (their `xdist_group`, tests/conftest.py).
    None when the caller chose tests or workers (`-n`, `-p no:xdist`)."""
    if rest:
        return []
    return ["-n", str(max(2, min(4, os.cpu_count() or 2))), "--dist", "loadgroup"]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
