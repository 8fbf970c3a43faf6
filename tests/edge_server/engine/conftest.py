"""Engine test fixtures: Moonshine base (skipped where the store has no copy), the `cuda`
marker (tests that need a working CUDA provider; bench/gpu_check.py runs them)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cuda: needs a working CUDA provider (skipped without)")


def model_available(model_id: str) -> bool:
    from tests.inputs import model_ready

    return model_ready(model_id)


@pytest.fixture(scope="session")
def base_engine():
    if not model_available("moonshine-base-en"):
        pytest.fail("moonshine-base-en is not installed (earshot models fetch moonshine-base-en)")
    from edge_server.engine import create_engine

    return create_engine("moonshine-base-en", device="cpu", threads=2)


def int8_form(model_id: str) -> str | None:
    """Name of a form of `model_id` whose graphs hold CPU-only int8 ops (the shipped tiny
    files; a named int8 form once models.store prepares forms), or None."""
    from edge_server.engine.placement import cpu_only_ops
    from edge_server.engine.registry import resolve_form
    from models.catalog import load_catalog

    spec = load_catalog().get(model_id)
    names = [f.name for f in spec.all_forms()] if hasattr(spec, "all_forms") else ["shipped"]
    for name in names:
        try:
            form = resolve_form(model_id, name, "cpu")
        except Exception:  # not prepared here
            continue
        if cpu_only_ops(p for role, p in form.paths.items() if role != "tokenizer"):
            return name
    return None
