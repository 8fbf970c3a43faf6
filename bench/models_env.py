"""Where benchmarks find models when EARSHOT_MODELS_DIR is not set: the same list the tests
use, `<repo>/.cache/models` (fetched and prepared files, written by `earshot models fetch`)
then `../shared/models` (the shipped files, read-only) when it exists."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def default_models_dir() -> str:
    """The os.pathsep-separated folder list benchmarks default EARSHOT_MODELS_DIR to."""
    shared = Path(os.environ.get("EARSHOT_SHARED", REPO.parent / "shared")) / "models"
    dirs = [REPO / ".cache" / "models"] + ([shared] if shared.is_dir() else [])
    return os.pathsep.join(str(d) for d in dirs)


def default_dev_dir() -> Path:
    """Dev speech with a transcripts.tsv: `../shared/speech/dev` when it is beside the repo,
    else the sentences committed under tests/data/speech (same layout, same bytes)."""
    shared = Path(os.environ.get("EARSHOT_SHARED", REPO.parent / "shared")) / "speech" / "dev"
    return shared if (shared / "transcripts.tsv").is_file() else REPO / "tests" / "data" / "speech"
