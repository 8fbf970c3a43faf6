"""Shared fixtures: real models from ../shared/models, real dev speech, one engine per session."""

from __future__ import annotations

import csv
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EARSHOT_SHARED", REPO.parent / "shared"))
DEV = SHARED / "speech" / "dev"
LONGFORM = SHARED / "speech" / "longform"
SENTENCE_SETS = ("sherpa-test-wavs", "librispeech-test-clean-kw", "pocketsphinx-testdata")

os.environ.setdefault("EARSHOT_MODELS_DIR", str(SHARED / "models"))
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
    models = Path(os.environ["EARSHOT_MODELS_DIR"])
    if not (models / "moonshine-tiny-en").is_dir():
        raise pytest.UsageError(
            f"models not found in {models}: set EARSHOT_MODELS_DIR or put ../shared beside the repo"
        )


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
