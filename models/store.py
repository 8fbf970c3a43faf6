"""Where model files live on disk, and whether they are whole.

Search order for a model `<id>`:
1. `$EARSHOT_MODELS_DIR/<id>/` when EARSHOT_MODELS_DIR is set (then nothing else is searched);
2. the user's data folder (`platformdirs`): `<user data>/earshot/models/<id>/`, where
   `earshot models fetch` writes;
3. a `models/` folder bundled next to a frozen (PyInstaller) executable.

`require_model()` checks every file's size and sha256 before anything hands the path to
onnxruntime, so a truncated or tampered file is reported by name with a fix.
Thread-safe (read-only file access).
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from models.catalog import ModelFile, ModelSpec, load_catalog

ENV_MODELS_DIR = "EARSHOT_MODELS_DIR"


class ModelNotReadyError(RuntimeError):
    """A model is missing or damaged. The message names the file and says how to fix it."""


@dataclass(frozen=True)
class FileProblem:
    """Why one file of a model cannot be used."""

    file: ModelFile
    path: Path
    reason: str  # "missing", "truncated", "wrong size", "checksum mismatch"


def user_models_dir() -> Path:
    """The per-user folder that `earshot models fetch` writes to."""
    return Path(platformdirs.user_data_dir("earshot", appauthor=False)) / "models"


def search_dirs() -> list[Path]:
    """Folders searched for models, in order (see the module docstring)."""
    env = os.environ.get(ENV_MODELS_DIR)
    if env:
        return [Path(env).expanduser()]
    dirs = [user_models_dir()]
    bundle = getattr(sys, "_MEIPASS", None)
    if bundle:
        dirs.append(Path(bundle) / "models")
    return dirs


def fetch_target_dir() -> Path:
    """Where a fetch writes: EARSHOT_MODELS_DIR if set, else the user data folder."""
    return search_dirs()[0]


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def check_files(spec: ModelSpec, folder: Path, verify_hash: bool = True) -> list[FileProblem]:
    """Problems with `spec`'s files in `folder` (empty list: the model is whole)."""
    problems = []
    for f in spec.files:
        path = folder / f.name
        if not path.is_file():
            problems.append(FileProblem(f, path, "missing"))
            continue
        size = path.stat().st_size
        if size != f.size:
            reason = "truncated" if size < f.size else "wrong size"
            problems.append(FileProblem(f, path, f"{reason} ({size} of {f.size} bytes)"))
        elif verify_hash and sha256_of(path) != f.sha256:
            problems.append(FileProblem(f, path, "checksum mismatch"))
    return problems


@dataclass(frozen=True)
class ModelStatus:
    """Where a model was looked for and what was found."""

    spec: ModelSpec
    folder: Path | None  # the folder holding a whole copy, if any
    problems: tuple[FileProblem, ...]  # problems of the best partial copy found

    @property
    def installed(self) -> bool:
        return self.folder is not None


def model_status(model_id: str, verify_hash: bool = True) -> ModelStatus:
    """Look for `model_id` in every search folder; report the first whole copy."""
    spec = load_catalog().get(model_id)
    best: tuple[FileProblem, ...] | None = None
    for base in search_dirs():
        folder = base / model_id
        problems = tuple(check_files(spec, folder, verify_hash))
        if not problems:
            return ModelStatus(spec, folder, ())
        if best is None or (folder.exists() and any(p.reason != "missing" for p in problems)):
            best = problems
    return ModelStatus(spec, None, best or ())


def require_model(model_id: str) -> Path:
    """Folder of a whole, verified copy of `model_id`, or ModelNotReadyError with a fix."""
    status = model_status(model_id)
    if status.installed:
        assert status.folder is not None
        return status.folder
    damaged = [p for p in status.problems if p.reason != "missing"]
    where = ", ".join(str(d / model_id) for d in search_dirs())
    fix = f"run `earshot models fetch {model_id}`"
    if os.environ.get(ENV_MODELS_DIR):
        fix += f" (it writes to ${ENV_MODELS_DIR}) or point {ENV_MODELS_DIR} at a complete copy"
    if damaged:
        p = damaged[0]
        return_msg = (
            f"model '{model_id}' is damaged: {p.path} is {p.reason}. "
            f"Delete it and {fix}."
        )
        raise ModelNotReadyError(return_msg)
    missing = status.problems[0].file.name if status.problems else "?"
    raise ModelNotReadyError(
        f"model '{model_id}' is not installed ({missing} not found in {where}); {fix}."
    )
