"""ModelFetchDialog with pytest-qt against a real local package index serving real model
wheels: progress, preparing, cancel and resume, offline and Retry, closing mid-fetch."""

from __future__ import annotations

import socket

import pytest
from PySide6.QtCore import QObject, Slot
from PySide6.QtWidgets import QDialog

from desktop.widgets.model_fetch_dialog import ModelFetchDialog, describe
from models.catalog import load_catalog
from models.store import check_files, forget_verified, require_form, require_model
from tests.package_index import PackageIndex, build_wheel

CATALOG = load_catalog()


@pytest.fixture(scope="module")
def wheels(tmp_path_factory):
    """Real wheels of the default speech model and VAD (their files as the store has them)."""
    folder = tmp_path_factory.mktemp("wheels")
    return {m: build_wheel(folder, CATALOG.get(m), require_model(m))
            for m in (CATALOG.default_asr, CATALOG.default_vad)}


@pytest.fixture
def index(wheels, monkeypatch, tmp_path):
    """The local index as EARSHOT_PACKAGE_INDEX, and an empty EARSHOT_MODELS_DIR."""
    models = tmp_path / "models"
    models.mkdir()
    monkeypatch.setenv("EARSHOT_MODELS_DIR", str(models))
    forget_verified()
    with PackageIndex() as idx:
        for wheel in wheels.values():
            idx.add(wheel)
        monkeypatch.setenv("EARSHOT_PACKAGE_INDEX", idx.url)
        idx.models = models
        yield idx


class Recorder(QObject):
    """Notes the dialog's text and bar after each report (queued after the dialog's own)."""

    def __init__(self, dialog: ModelFetchDialog) -> None:
        super().__init__()
        self.dialog = dialog
        self.texts: list[str] = []
        self.bars: list[tuple[int, int]] = []
        self.states: list[str] = []
        dialog.worker.bytes_received.connect(self.note)
        dialog.worker.stage.connect(self.note)

    @Slot()
    def note(self, *_args) -> None:
        self.texts.append(self.dialog.detail.text())
        self.bars.append((self.dialog.bar.value(), self.dialog.bar.maximum()))
        self.states.append(self.dialog.state)


def served_mb(index: PackageIndex, prefix: str) -> str:
    """Size of the served wheel whose name starts with `prefix`, as the dialog writes it."""
    return f"{next(len(d) for n, d in index.files.items() if n.startswith(prefix)) / 1e6:.1f}"


def file_ranges(index: PackageIndex) -> list[str | None]:
    return [rng for path, rng in index.requests if path.startswith("/files/")]


def test_fetches_the_models_with_progress_then_prepares(qtbot, index):
    ids = [CATALOG.default_asr, CATALOG.default_vad]
    dialog = ModelFetchDialog(ids)
    qtbot.addWidget(dialog)
    seen = Recorder(dialog)
    assert "Moonshine tiny, English, int8 (44 MB) and Silero VAD v6 (2 MB)" in \
        dialog.heading.text()
    with qtbot.waitSignal(dialog.accepted, timeout=60_000):
        dialog.show()
    assert dialog.state == "done" and dialog.result() == QDialog.DialogCode.Accepted
    mb = served_mb(index, "moonshine")
    assert any(t.startswith("Downloading Moonshine tiny, English, int8 (1 of 2): ")
               and t.endswith(f" of {mb} MB") for t in seen.texts)
    assert any(t.startswith("Downloading Silero VAD v6 (2 of 2): ") for t in seen.texts)
    values = [v for v, m in seen.bars if m == 1000]
    assert values[0] < 500 and max(values) == 1000  # the bar moved with the bytes
    assert "Preparing Moonshine tiny, English, int8 (1 of 2)…" in seen.texts
    assert "preparing" in seen.states
    form = require_form(CATALOG.default_asr, device="cpu")  # prepared forms, verified
    assert all(p.parent == index.models / CATALOG.default_asr for p in form.paths.values())
    assert check_files(CATALOG.get(CATALOG.default_vad),
                       index.models / CATALOG.default_vad) == []


def test_cancel_keeps_the_part_and_retry_resumes(qtbot, index):
    vad = CATALOG.default_vad
    index.stall_after = 1_000_000  # the transfer stalls there until the test lets it go on
    index.hold.clear()
    dialog = ModelFetchDialog([vad])
    qtbot.addWidget(dialog)
    dialog.show()
    qtbot.waitUntil(lambda: dialog.detail.text().startswith(
        "Downloading Silero VAD v6: 1.0 of "), timeout=20_000)
    assert dialog.cancel_button.isVisible() and not dialog.retry_button.isVisible()
    dialog.cancel_button.click()
    qtbot.waitUntil(lambda: dialog.state == "cancelled", timeout=10_000)
    assert dialog.detail.text() == (f"Download paused. 1.0 of {served_mb(index, 'silero')} "
                                    "MB are kept; "
                                    "Retry continues where it stopped.")
    assert dialog.retry_button.isVisible() and dialog.close_button.isVisible()
    assert not dialog.cancel_button.isVisible()
    assert (index.models / ".downloads").is_dir()
    index.hold.set()
    with qtbot.waitSignal(dialog.accepted, timeout=30_000):
        dialog.retry_button.click()
    assert file_ranges(index) == [None, "bytes=1000000-"]
    assert check_files(CATALOG.get(vad), index.models / vad) == []


def test_offline_says_so_and_retry_works_once_online(qtbot, index, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("EARSHOT_PACKAGE_INDEX", f"http://127.0.0.1:{port}/simple")
    vad = CATALOG.default_vad
    dialog = ModelFetchDialog([vad])
    qtbot.addWidget(dialog)
    dialog.show()
    qtbot.waitUntil(lambda: dialog.state == "failed", timeout=20_000)
    assert dialog.offline
    assert dialog.detail.text() == (
        f"The download failed. Could not reach 127.0.0.1:{port} (no internet connection?). "
        f"The model's files can also be copied into {index.models / vad} by hand "
        "(see docs/models.md).")
    assert dialog.retry_button.isVisible() and dialog.close_button.isVisible()
    monkeypatch.setenv("EARSHOT_PACKAGE_INDEX", index.url)  # back online
    with qtbot.waitSignal(dialog.accepted, timeout=30_000):
        dialog.retry_button.click()
    assert check_files(CATALOG.get(vad), index.models / vad) == []


def test_closing_mid_download_cancels_first(qtbot, index):
    index.stall_after = 500_000
    index.hold.clear()
    dialog = ModelFetchDialog([CATALOG.default_vad])
    qtbot.addWidget(dialog)
    dialog.show()
    qtbot.waitUntil(lambda: "0.5 of" in dialog.detail.text(), timeout=20_000)
    with qtbot.waitSignal(dialog.rejected, timeout=10_000):
        dialog.reject()  # Esc / the window's close button
        assert dialog.isVisible() and dialog.state == "cancelling"  # waits for the worker
    assert not dialog.worker.running()
    assert list((index.models / ".downloads").glob("*.part"))


def test_describe_names_models_and_sizes():
    assert describe(["silero-vad"]) == "Silero VAD v6 (2 MB)"
