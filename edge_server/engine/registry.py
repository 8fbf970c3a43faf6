"""Model family -> engine class, and which prepared form of a model a device loads.

Adding a family is one module plus one line here. Forms: `models.store.require_form`
(prepared files per device, e.g. a float form for CUDA) when the store has it; otherwise
the catalog's files as shipped, form name "shipped".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from edge_server.engine.base import AsrEngine, EngineError
from edge_server.engine.placement import cpu_only_ops
from edge_server.engine.runtime import SessionFactory
from models.catalog import load_catalog
from models.store import require_model

log = logging.getLogger(__name__)

SHIPPED_NAMES = {"encoder": "encoder_model.ort", "decoder": "decoder_model_merged.ort",
                 "tokenizer": "tokenizer.bin"}


@dataclass(frozen=True)
class ShippedForm:
    """A form's name, files by role and devices (the store's, or the catalog files as
    shipped when models.store has no prepared forms)."""

    name: str
    paths: dict[str, Path]
    devices: tuple[str, ...] = ("cpu",)


def by_role(paths: dict) -> dict[str, Path]:
    """Role -> path ("encoder", "decoder", "tokenizer"); keys that are file names (e.g.
    "encoder_model.ort") are mapped to the role their name starts with."""
    out: dict[str, Path] = {}
    for key, path in paths.items():
        role = next((r for r in SHIPPED_NAMES if str(key).startswith(r)), str(key))
        out[role] = Path(path)
    missing = [r for r in SHIPPED_NAMES if r not in out]
    if missing:
        raise EngineError(f"model form lacks the {', '.join(missing)} file(s): {sorted(paths)}")
    return out


def resolve_form(model_id: str, form: str | None, device: str):
    """The form to load for `device` ('cpu' or 'cuda'): an object with .name, .paths
    (role -> Path) and .devices. Raises ModelNotReadyError (with the fix) when missing."""
    from models import store

    require_form = getattr(store, "require_form", None)
    if require_form is not None:
        try:
            found = require_form(model_id, form=form, device=device)
        except store.ModelNotReadyError:
            raise
        except (KeyError, ValueError) as exc:  # models.catalog.UnknownFormError and kin
            raise EngineError(str(exc).strip("'\"")) from exc
        return ShippedForm(found.name, by_role(found.paths), tuple(found.devices))
    if form not in (None, "shipped"):
        raise EngineError(f"model '{model_id}' has no form '{form}' in this build "
                          "(only the files as shipped: form 'shipped')")
    folder = require_model(model_id)
    return ShippedForm("shipped", {role: folder / name for role, name in SHIPPED_NAMES.items()})


def check_device(model_id: str, form, device: str) -> None:
    """Refuse CUDA for a form whose graphs hold ops ONNX Runtime's CUDA provider cannot run
    (int8 dynamic quantisation), before any session is created."""
    if device != "cuda":
        return
    graphs = [p for role, p in form.paths.items() if role != "tokenizer"]
    bad = cpu_only_ops(graphs)
    if bad:
        ops = ", ".join(f"{op} x {n}" for op, n in bad.most_common())
        raise EngineError(
            f"model '{model_id}' ({form.name} form) cannot run on CUDA: its graphs use "
            f"CPU-only int8 ops ({ops}) that ONNX Runtime's CUDA provider has no kernels "
            f"for. Use the float form: earshot models fetch {model_id}")


def create_engine(model_id: str | None = None, device: str = "auto",
                  threads: int | None = None, form: str | None = None) -> AsrEngine:
    """Load a verified catalog model (its form for the device) into its family's engine.

    device: 'auto' (CUDA when a CUDA-capable form and a working CUDA provider exist, else
    CPU), 'cpu' or 'cuda' (an error with the fix when the model cannot really run there).
    form: a form name of models.store (None: the device's default form).
    """
    catalog = load_catalog()
    spec = catalog.get(model_id or catalog.default_asr)
    if spec.kind != "asr":
        raise EngineError(f"model '{spec.id}' is a {spec.kind} model, not a speech recognizer")
    factory = SessionFactory(device=device, threads=threads)
    target = "cuda" if device == "cuda" or (device == "auto" and factory.cuda_listed()) else "cpu"
    try:
        chosen = resolve_form(spec.id, form, target)
    except EngineError as exc:  # the store says this form is not for `target`
        if form is None or target == "cpu":
            raise
        if device == "auto":  # a CPU-only form asked for by name: 'auto' means CPU then
            log.warning("%s; running on CPU", exc)
            target, factory = "cpu", SessionFactory(device="cpu", threads=threads)
            chosen = resolve_form(spec.id, form, "cpu")
        else:  # say why, with the fix
            check_device(spec.id, resolve_form(spec.id, form, "cpu"), target)
            raise
    if device == "auto" and target == "cuda":
        try:
            check_device(spec.id, chosen, "cuda")
        except EngineError as exc:
            log.warning("%s; running on CPU", exc)
            factory = SessionFactory(device="cpu", threads=threads)
    else:
        check_device(spec.id, chosen, target)
    if spec.family == "moonshine":
        from edge_server.engine.moonshine import MoonshineEngine

        engine: AsrEngine = MoonshineEngine(spec.id, chosen.paths, factory, form=chosen.name)
    else:
        raise EngineError(f"no engine for model family '{spec.family}'")
    log.info("engine %s (%s form) loaded on %s (%s threads)", spec.id, chosen.name,
             engine.provider, factory.threads or "auto")
    return engine
