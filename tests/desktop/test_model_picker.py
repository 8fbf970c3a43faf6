"""Model choice in the real window (pytest-qt): the picker offers what the server in use
serves, the pick is persisted, sent to a server that serves it (the status bar shows what
the server decodes with), and the embedded local server serves the picked model."""

from __future__ import annotations

import json
import urllib.request

import pytest
from PySide6.QtCore import QSettings

from desktop.capture import FileSource
from desktop.controller import DictationController
from desktop.history import History
from desktop.journal import Journal
from desktop.window import MainWindow
from edge_server.evaluation import word_error_rate
from tests.conftest import DEV, dev_rows
from tests.server_harness import start_server

TINY, BASE = "moonshine-tiny-en", "moonshine-base-en"
ROW = next(r for r in dev_rows(("pocketsphinx-testdata",)) if r["path"].endswith("0880.wav"))


def make_window(qtbot, tmp_path, settings_file):
    history = History(tmp_path / "history.db")
    controller = DictationController(history, Journal(tmp_path / "journal"))
    settings = QSettings(str(settings_file), QSettings.Format.IniFormat)
    window = MainWindow(controller, settings)
    qtbot.addWidget(window)
    window.show()
    return window, controller, history


def offered(window) -> list[str]:
    picker = window.model_picker
    return [picker.itemData(i) for i in range(picker.count())]


@pytest.fixture(scope="module")
def remote():
    srv = start_server("--model", f"{TINY},{BASE}")
    yield srv
    assert srv.stop() == 0


def test_picked_model_is_used_by_a_server_that_serves_it_and_persisted(qtbot, tmp_path,
                                                                        remote):
    settings_file = tmp_path / "settings.ini"
    window, controller, history = make_window(qtbot, tmp_path, settings_file)
    try:
        assert offered(window)[0] == TINY  # before any server: what this computer has
        window.set_server(remote.url)
        with qtbot.waitSignal(controller.finished, timeout=60_000) as done:
            assert window.start_dictation(FileSource(DEV / ROW["path"], realtime=False))
        assert window.model_label.text() == f"Model: {TINY}"  # nothing picked: its default
        assert offered(window) == [TINY, BASE]  # what the server in use serves
        assert window.model_picker.currentText() == f"{TINY} (default)"

        window.model_picker.setCurrentIndex(offered(window).index(BASE))
        assert controller.model == BASE
        with qtbot.waitSignal(controller.finished, timeout=60_000) as done:
            assert window.start_dictation(FileSource(DEV / ROW["path"], realtime=False))
        assert window.model_label.text() == f"Model: {BASE}"
        text = history.get(done.args[0]).text
        assert word_error_rate([ROW["transcript"]], [text]).wer <= 0.2, text
    finally:
        controller.shutdown()
        history.close()
    window.settings.sync()

    # a new run: the pick is restored; the embedded server serves it
    (tmp_path / "again").mkdir()
    again, controller, history = make_window(qtbot, tmp_path / "again", settings_file)
    try:
        assert controller.model == BASE and again.model_picker.currentData() == BASE
        assert controller.embedded.settings.model == BASE
        with qtbot.waitSignal(controller.local_server, timeout=120_000,
                              check_params_cb=lambda s: s != "starting"):
            controller.start_local_server()
        assert controller.embedded.status == "ready"
        with urllib.request.urlopen(controller.embedded.url + "/healthz", timeout=10) as r:
            assert json.loads(r.read())["server"]["models"] == [BASE]
        assert again.model_label.text() == f"Model: {BASE}"
    finally:
        controller.shutdown()
        history.close()
