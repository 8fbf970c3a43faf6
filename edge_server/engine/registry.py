"""Model family -> engine class. Adding a family is one module plus one line here."""

from __future__ import annotations

import logging

from edge_server.engine.base import AsrEngine, EngineError
from edge_server.engine.runtime import SessionFactory
from models.catalog import load_catalog
from models.store import require_model

log = logging.getLogger(__name__)


def create_engine(
    model_id: str | None = None, device: str = "auto", threads: int | None = None
) -> AsrEngine:
    """Load a verified catalog model into the engine of its family."""
    catalog = load_catalog()
    spec = catalog.get(model_id or catalog.default_asr)
    if spec.kind != "asr":
        raise EngineError(f"model '{spec.id}' is a {spec.kind} model, not a speech recognizer")
    folder = require_model(spec.id)
    factory = SessionFactory(device=device, threads=threads)
    if spec.family == "moonshine":
        from edge_server.engine.moonshine import MoonshineEngine

        engine: AsrEngine = MoonshineEngine(spec.id, folder, factory)
    else:
        raise EngineError(f"no engine for model family '{spec.family}'")
    log.info("engine %s loaded on %s (%s threads)", spec.id, engine.provider,
             factory.threads or "auto")
    return engine
