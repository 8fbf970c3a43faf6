"""The real window with pytest-qt: embedded server, real model, file fed as a microphone."""

from __future__ import annotations

import json
import os
import signal
import urllib.request
from pathlib import Path

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


def test_automatic_picks_a_discovered_server_on_this_machine_and_lists_it(qtbot, app_parts):
    window, controller, history, _, _ = app_parts
    remote = start_server("--mdns-interfaces", "127.0.0.1", "--name", "office-box")
    try:  # on this machine (loopback), so it needs no pairing
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


def test_automatic_never_picks_an_open_server(qtbot, app_parts):
    window, controller, history, _, _ = app_parts
    remote = start_server("--mdns-interfaces", "127.0.0.1", "--name", "open-box", "--auth", "none")
    try:  # anyone can run a server that asks for no token: never trusted automatically
        controller.start_discovery(every_s=1.0)
        qtbot.waitUntil(lambda: window.server_picker.findText(
            "open-box", Qt.MatchFlag.MatchStartsWith) >= 0, timeout=15_000)
        index = window.server_picker.findText("open-box", Qt.MatchFlag.MatchStartsWith)
        assert window.server_picker.itemText(index).endswith("(open)")
        source = FileSource(DEV / "sherpa-test-wavs/8k.wav", realtime=False)
        with qtbot.waitSignal(controller.finished, timeout=60_000) as done:
            assert window.start_dictation(source, "Open")
        assert history.get(done.args[0]).server == "This computer"
    finally:
        remote.stop()


@pytest.fixture
def locked_box(tmp_path):
    """A https server on this machine that wants its token from everyone (--auth all)."""
    import subprocess
    import sys

    state = tmp_path / "box-state"
    out = subprocess.run([sys.executable, "-m", "edge_server.cli", "identity", "--json",
                          "--state-dir", str(state)], capture_output=True, text=True, check=True)
    identity = json.loads(out.stdout)
    server = start_server("--mdns-interfaces", "127.0.0.1", "--name", "locked-box",
                          "--auth", "all", "--token", "office", "--state-dir", str(state),
                          "--tls-cert", identity["certificate"],
                          "--tls-key", str(state / "identity-key.pem"))
    yield server, identity
    server.stop()


def test_choosing_a_locked_server_pairs_it_and_dictates_there(qtbot, app_parts, locked_box,
                                                               monkeypatch):
    from PySide6.QtWidgets import QInputDialog

    window, controller, history, _, _ = app_parts
    _, identity = locked_box
    controller.start_discovery(every_s=1.0)
    qtbot.waitUntil(lambda: window.server_picker.findText(
        "locked-box", Qt.MatchFlag.MatchStartsWith) >= 0, timeout=15_000)
    index = window.server_picker.findText("locked-box", Qt.MatchFlag.MatchStartsWith)
    assert window.server_picker.itemText(index).endswith("🔒")
    asked: list[str] = []

    def type_token(token):
        def answer(parent, title, label, *args):
            asked.append(label)
            return token, True
        return answer

    monkeypatch.setattr(QInputDialog, "getText", type_token("not-it"))
    window.server_picker.setCurrentIndex(index)
    qtbot.waitUntil(lambda: window.message.text().startswith("Not paired"), timeout=10_000)
    assert "token does not match" in window.message.text()
    assert controller.pins.get(identity["server_id"]) is None

    monkeypatch.setattr(QInputDialog, "getText", type_token("office"))
    index = window.server_picker.findText("locked-box", Qt.MatchFlag.MatchStartsWith)
    window.server_picker.setCurrentIndex(index)
    qtbot.waitUntil(lambda: window.message.text().startswith("Paired"), timeout=10_000)
    fingerprint = identity["fingerprint"]
    assert fingerprint[:2].upper() + ":" + fingerprint[2:4].upper() in asked[-1]
    assert controller.pins.get(identity["server_id"]).fingerprint == fingerprint
    assert controller.credentials.get(identity["server_id"]) == "office"
    window.settings.sync()
    assert "office" not in Path(window.settings.fileName()).read_text()
    source = FileSource(DEV / "sherpa-test-wavs/8k.wav", realtime=False)
    with qtbot.waitSignal(controller.finished, timeout=60_000) as done:
        assert window.start_dictation(source, "Paired")
    record = history.get(done.args[0])
    assert record.server == "locked-box" and "apprehension" in record.text.lower()


def test_a_record_with_a_paired_id_and_another_fingerprint_is_refused_visibly(
        qtbot, app_parts, locked_box):
    import time

    from desktop.lan.pins import PairedServer

    window, controller, history, _, _ = app_parts
    server, identity = locked_box
    controller.pins.add(PairedServer(identity["server_id"], "ab" * 32, "locked-box", server.url,
                                     time.time()))  # paired with a server holding another key
    controller.credentials.set(identity["server_id"], "office")
    controller.start_discovery(every_s=1.0)
    qtbot.waitUntil(lambda: window.notice.isVisible(), timeout=15_000)
    assert "Refused 'locked-box'" in window.notice.text()
    index = window.server_picker.findText("locked-box", Qt.MatchFlag.MatchStartsWith)
    assert "refused" in window.server_picker.itemText(index)
    source = FileSource(DEV / "sherpa-test-wavs/8k.wav", realtime=False)
    with qtbot.waitSignal(controller.finished, timeout=60_000) as done:
        assert window.start_dictation(source, "Refused")
    assert history.get(done.args[0]).server == "This computer"
    with urllib.request.urlopen(server.url + "/api/stats", context=server.ssl_context) as resp:
        assert json.loads(resp.read())["totals"]["sessions_started"] == 0


def test_tokens_kept_in_plain_settings_move_to_the_credential_store(qtbot, tmp_path):
    settings = QSettings(str(tmp_path / "old.ini"), QSettings.Format.IniFormat)
    settings.setValue("server/tokens", {"abc123": "old-secret"})
    settings.setValue("server/mode", "remote")
    settings.setValue("server/url", "https://box:8765")
    settings.setValue("server/token", "url-secret")
    settings.sync()
    history = History(tmp_path / "history.db")
    controller = DictationController(history, Journal(tmp_path / "journal"))
    try:
        window = MainWindow(controller, settings)
        qtbot.addWidget(window)
        settings.sync()
        text = (tmp_path / "old.ini").read_text()
        assert "old-secret" not in text and "url-secret" not in text
        assert controller.credentials.get("abc123") == "old-secret"
        assert controller.choice.token == "url-secret"
    finally:
        controller.shutdown()
        history.close()
