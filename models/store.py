"""Where model files live on disk, and whether they are whole.

Search folders, in order:
1. `$EARSHOT_MODELS_DIR` when set: one folder or an `os.pathsep`-separated list of them
   (then nothing else is searched). The FIRST is where `earshot models fetch` writes;
2. otherwise the user's data folder (`platformdirs`): `<user data>/earshot/models/`, where
   `earshot models fetch` writes, then
3. a `models/` folder bundled next to a frozen (PyInstaller) executable.

A model's files live in `<folder>/<model id>/<file name>`. Each file of a model (shipped
or prepared, see `models.catalog`) is resolved on its own, from the first folder that
holds a whole copy of it (size and sha256 as in the catalog). So with
`EARSHOT_MODELS_DIR=<repo>/.cache/models:/work/shared/models` a model's shipped files can
come from the read-only shared folder and its prepared files from the cache.

`require_form()` is what engines call: the verified paths of one form's files, or
ModelNotReadyError naming the file and the fix. `require_model()` (the folder holding all
shipped files) stays for single-file models such as Silero VAD.

Hashing a big file costs a fraction of a second, so a verified file is remembered by
(path, size, mtime, inode) for the life of the process: re-loading an engine does not hash
again, and a file replaced or touched since is hashed again. Thread-safe (read-only file
access; the verification memo is guarded by a lock).
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from models.catalog import FormSpec, ModelFile, ModelSpec, PreparedFile, load_catalog

ENV_MODELS_DIR = "EARSHOT_MODELS_DIR"

CatalogFile = ModelFile | PreparedFile


class ModelNotReadyError(RuntimeError):
    """A model is missing or damaged. The message names the file and says how to fix it."""


@dataclass(frozen=True)
class FileProblem:
    """Why one file of a model cannot be used."""

    file: CatalogFile
    path: Path
    reason: str  # "missing", "truncated", "wrong size", "checksum mismatch"


def user_models_dir() -> Path:
    """The per-user folder that `earshot models fetch` writes to."""
    return Path(platformdirs.user_data_dir("earshot", appauthor=False)) / "models"


def search_dirs() -> list[Path]:
    """Folders searched for models, in order (see the module docstring)."""
    env = os.environ.get(ENV_MODELS_DIR)
    if env:
        dirs = [Path(part).expanduser() for part in env.split(os.pathsep) if part.strip()]
        if dirs:
            return dirs
    dirs = [user_models_dir()]
    bundle = getattr(sys, "_MEIPASS", None)
    if bundle:
        dirs.append(Path(bundle) / "models")
    return dirs


def fetch_target_dir() -> Path:
    """Where a fetch writes: the first EARSHOT_MODELS_DIR folder, else the user data folder."""
    return search_dirs()[0]


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


_verified: dict[tuple[str, int, int, int, str], bool] = {}
_verified_lock = threading.Lock()


def verify_file(f: CatalogFile, path: Path, verify_hash: bool = True) -> str | None:
    """Why `path` is not a whole copy of `f` ("missing", "truncated (..)", ...), or None.

    The sha256 result is memoised per (path, size, mtime, inode, expected hash).
    """
    try:
        st = path.stat()
    except OSError:
        return "missing"
    if not path.is_file():
        return "missing"
    if st.st_size != f.size:
        reason = "truncated" if st.st_size < f.size else "wrong size"
        return f"{reason} ({st.st_size} of {f.size} bytes)"
    if not verify_hash:
        return None
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino, f.sha256)
    with _verified_lock:
        known = _verified.get(key)
    if known is None:
        known = sha256_of(path) == f.sha256
        with _verified_lock:
            _verified[key] = known
    return None if known else "checksum mismatch"


def forget_verified() -> None:
    """Drop the memo of verified files (tests; a process that rewrote files in place)."""
    with _verified_lock:
        _verified.clear()


def check_files(spec: ModelSpec, folder: Path, verify_hash: bool = True) -> list[FileProblem]:
    """Problems with `spec`'s shipped files in `folder` (empty list: they are whole)."""
    problems = []
    for f in spec.files:
        path = folder / f.name
        reason = verify_file(f, path, verify_hash)
        if reason is not None:
            problems.append(FileProblem(f, path, reason))
    return problems


def locate_file(spec: ModelSpec, f: CatalogFile, dirs: list[Path] | None = None,
                verify_hash: bool = True) -> tuple[Path | None, FileProblem | None]:
    """(path of the first whole copy of `f`, None), or (None, the most telling problem).

    A damaged copy is reported over a missing one, so the fix names the bad file.
    """
    worst: FileProblem | None = None
    for base in search_dirs() if dirs is None else dirs:
        path = base / spec.id / f.name
        reason = verify_file(f, path, verify_hash)
        if reason is None:
            return path, None
        if worst is None or (worst.reason == "missing" and reason != "missing"):
            worst = FileProblem(f, path, reason)
    return None, worst


@dataclass(frozen=True)
class ModelStatus:
    """Where a model was looked for and what was found."""

    spec: ModelSpec
    folder: Path | None  # the folder holding a whole copy of the shipped files, if any
    problems: tuple[FileProblem, ...]  # problems of the best partial copy found

    @property
    def installed(self) -> bool:
        return self.folder is not None


def model_status(model_id: str, verify_hash: bool = True) -> ModelStatus:
    """Look for `model_id`'s shipped files in every search folder; report the first whole
    copy."""
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


def _fix(model_id: str) -> str:
    fix = f"run `earshot models fetch {model_id}`"
    if os.environ.get(ENV_MODELS_DIR):
        fix += (f" (it writes to the first folder of ${ENV_MODELS_DIR}) or point "
                f"{ENV_MODELS_DIR} at a complete copy")
    return fix


def _not_ready(model_id: str, problem: FileProblem, what: str) -> ModelNotReadyError:
    if problem.reason != "missing":
        return ModelNotReadyError(f"{what} is damaged: {problem.path} is {problem.reason}. "
                                  f"Delete it and {_fix(model_id)}.")
    where = ", ".join(str(d / model_id) for d in search_dirs())
    return ModelNotReadyError(f"{what} is not installed ({problem.file.name} not found in "
                              f"{where}); {_fix(model_id)}.")


def require_model(model_id: str) -> Path:
    """Folder of a whole, verified copy of `model_id`'s shipped files, or
    ModelNotReadyError with a fix."""
    status = model_status(model_id)
    if status.installed:
        assert status.folder is not None
        return status.folder
    damaged = [p for p in status.problems if p.reason != "missing"]
    problem = damaged[0] if damaged else (status.problems[0] if status.problems else None)
    if problem is None:  # a catalog entry without files
        raise ModelNotReadyError(f"model '{model_id}' lists no files")
    raise _not_ready(model_id, problem, f"model '{model_id}'")


@dataclass(frozen=True)
class ModelForm:
    """One form of a model, ready to load: role -> verified path, and its devices."""

    model_id: str
    name: str
    paths: dict[str, Path]
    devices: tuple[str, ...]


def form_problems(spec: ModelSpec, form: FormSpec,
                  verify_hash: bool = True) -> tuple[dict[str, Path], list[FileProblem]]:
    """(role -> path of each whole file found, problems of the files not found whole)."""
    paths: dict[str, Path] = {}
    problems: list[FileProblem] = []
    for role, name in form.roles:
        path, problem = locate_file(spec, spec.file(name), verify_hash=verify_hash)
        if path is not None:
            paths[role] = path
        elif problem is not None:
            problems.append(problem)
    return paths, problems


def require_form(model_id: str, form: str | None = None, device: str = "cpu") -> ModelForm:
    """The verified files of form `form` of `model_id` (None: the default form for `device`).

    device: "cpu" or "cuda". Raises UnknownModelError / UnknownFormError (models.catalog)
    for an id or form the catalog does not have or a form that does not run on `device`,
    and ModelNotReadyError naming the missing or damaged file and the fix
    (`earshot models fetch ID`).
    """
    spec = load_catalog().get(model_id)
    chosen = spec.form(form, device)
    paths, problems = form_problems(spec, chosen)
    if problems:
        damaged = [p for p in problems if p.reason != "missing"]
        raise _not_ready(model_id, (damaged or problems)[0],
                         f"model '{model_id}' ({chosen.name} form)")
    return ModelForm(model_id, chosen.name, paths, chosen.devices)
