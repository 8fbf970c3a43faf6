"""The real window with pytest-qt: embedded server, real model, file fed as a microphone."""

from __future__ import annotations

import os
import signal

import pytest
import soundfile as sf
from PySide6.QtCore import QSettings, Qt

from desktop.capture import FileSource
from desktop.controller import DictationController
from desktop.history import History
from desktop.journal import Journal
from desktop.window import MainWindow
from edge_server.evaluation import normalize
from tests.conftest import DEV, dev_rows, speech_with_pauses
from tests.server_harness import start_server


@pytest.fixture
def app_parts(qtbot, tmp_path):
    history = History(tmp_path / "history.db")
    journal = Journal(tmp_path / "journal")
    controller = DictationController(history, journal)
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    window = MainWindow(controller, settings)
    qtbot.addWidget(window)
    window.show()
    seen = {"partials": [], "states": []}
    controller.partial.connect(seen["partials"].append)
    controller.state.connect(lambda *s: seen["states"].append(s))
    with qtbot.waitSignal(controller.local_server, timeout=120_000,
                          check_params_cb=lambda s: s != "starting"):
        controller.start_local_server()
    assert controller.embedded.status == "ready"
    yield window, controller, history, journal, seen
    controller.shutdown()
    history.close()


def test_dictation_shows_partials_then_finals_and_lands_in_history(qtbot, app_parts, tmp_path):
    window, controller, history, journal, seen = app_parts
    assert window.mic_picker.currentData() is None  # no microphone on this machine
    source = FileSource(DEV / "sherpa-test-wavs/0.wav", realtime=True)
    with qtbot.waitSignal(controller.finished, timeout=60_000) as done:
        assert window.start_dictation(source, "Lamps")
        qtbot.waitUntil(lambda: window.transcript.partial_text() is not None, timeout=10_000)
    dictation_id = done.args[0]
    assert seen["partials"], "partial text while speaking"
    text = window.transcript.final_text().lower()
    assert "yellow lamps" in text and window.transcript.partial_text() is None
    record = history.get(dictation_id)
    assert record.title == "Lamps" and record.status == "done" and record.duration > 6
    assert [s.text for s in record.segments] and "lamps" in record.text.lower()
    assert [r.id for r in history.search("squalid")] == [dictation_id]
    assert not journal.unfinished()
    assert window.record_button.text() == "● Record"
    window.grab().save(str(tmp_path / "window.png"))


def test_record_without_microphone_explains(qtbot, app_parts):
    window, *_ = app_parts
    window.toggle_recording()
    assert "No microphone is available" in window.message.text()


def test_stopping_the_remote_server_mid_dictation_loses_no_word(qtbot, app_parts, engine, read):
    window, controller, history, _, seen = app_parts
    rows = dev_rows(("pocketsphinx-testdata",))[:6]
    wav = history.path.parent / "failover.wav"
    sf.write(wav, speech_with_pauses([DEV / r["path"] for r in rows], pause_s=0.9), 16000)
    remote = start_server("--token", "office")
    try:
        window.set_server(remote.url, "office")
        with qtbot.waitSignal(controller.finished, timeout=120_000) as done:
            assert window.start_dictation(FileSource(wav, realtime=True), "Failover")
            qtbot.waitUntil(lambda: len(window.transcript.segments()) >= 2, timeout=60_000)
            os.kill(remote.proc.pid, signal.SIGKILL)  # the office box dies mid-sentence
        record = history.get(done.args[0])
    finally:
        remote.stop(signal.SIGKILL)
    assert any(s[0] == "fallback" for s in seen["states"])
    expected = []
    for r in rows:
        alone = normalize(engine.transcribe(read(r["path"]))).split()
        expected += [w for w in normalize(r["transcript"]).split() if w in alone]
    heard = normalize(record.text).split()
    missing = [w for w in expected if w not in heard]
    assert len(missing) <= 1, (missing, record.text)


def test_automatic_picks_a_discovered_server_and_lists_it(qtbot, app_parts):
    window, controller, history, _, _ = app_parts
    remote = start_server("--mdns-interfaces", "127.0.0.1", "--name", "office-box",
                          "--auth", "none")  # "automatic" skips servers whose token it lacks
    try:
        window.set_server(None, mode="auto")
        controller.start_discovery(every_s=1.0)
        qtbot.waitUntil(lambda: any(s.name == "office-box" for s in controller.discovered),
                        timeout=15_000)
        qtbot.waitUntil(lambda: window.server_picker.findText(
            "office-box", Qt.MatchFlag.MatchStartsWith) >= 0, timeout=5_000)
        source = FileSource(DEV / "sherpa-test-wavs/8k.wav", realtime=False)
        with qtbot.waitSignal(controller.finished, timeout=60_000) as done:
            assert window.start_dictation(source, "Auto")
        record = history.get(done.args[0])
        assert record.server == "office-box" and "apprehension" in record.text.lower()
    finally:
        remote.stop()
