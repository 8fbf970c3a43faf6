"""Fixtures for the model tests: shipped model files found by the store, their forms
prepared once per session into a temporary folder, real dev speech."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from models.catalog import load_catalog
from models.store import ModelNotReadyError, require_model

MOONSHINE = ("moonshine-tiny-en", "moonshine-base-en")


def shipped_dir(model_id: str) -> Path:
    """Folder holding `model_id`'s shipped files (whole); tests/inputs.py fetched them at start."""
    try:
        return require_model(model_id)
    except ModelNotReadyError as exc:
        pytest.fail(f"{model_id} is not available here: {exc}")


@pytest.fixture(scope="session")
def prepared_dir(tmp_path_factory) -> Path:
    """<tmp>/<id>/<file> for every prepared file of the Moonshine models, made here with
    models.prepare from the shipped files (what `earshot models fetch` does)."""
    from models.prepare import prepare_file

    root = tmp_path_factory.mktemp("prepared")
    catalog = load_catalog()
    for model_id in MOONSHINE:
        try:
            source = require_model(model_id)
        except ModelNotReadyError:
            continue  # tests of this model skip via shipped_dir
        for f in catalog.get(model_id).prepared:
            prepare_file(source / f.source, f.recipe, root / model_id / f.name)
    return root


def form_paths(prepared_dir: Path, model_id: str, form: str) -> dict[str, Path]:
    """role -> path of `form`: prepared files from `prepared_dir`, shipped from the store."""
    spec = load_catalog().get(model_id)
    shipped = shipped_dir(model_id)
    prepared = {f.name for f in spec.prepared}
    return {role: (prepared_dir / model_id if name in prepared else shipped) / name
            for role, name in spec.form(form).roles}


def copy_model(model_id: str, dest: Path, prepared_dir: Path | None = None) -> Path:
    """A writable copy of `model_id`'s shipped (and, if given, prepared) files in
    `dest/<id>`; returns that folder."""
    folder = dest / model_id
    folder.mkdir(parents=True, exist_ok=True)
    spec = load_catalog().get(model_id)
    src = shipped_dir(model_id)
    for f in spec.files:
        shutil.copyfile(src / f.name, folder / f.name)
    if prepared_dir is not None:
        for f in spec.prepared:
            shutil.copyfile(prepared_dir / model_id / f.name, folder / f.name)
    return folder
