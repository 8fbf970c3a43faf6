"""The real window with pytest-qt: embedded server, real model, file fed as a microphone."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PySide6.QtCore import QSettings, Qt, QTimer

from desktop.capture import Chunker, FileSource
from desktop.controller import DictationController
from desktop.history import History
from desktop.journal import Journal
from desktop.window import MainWindow
from edge_server.audio import audio_duration
from edge_server.evaluation import normalize
from tests.conftest import DEV, dev_rows, speech_with_pauses
from tests.desktop.poisoned_audio import POISON, poisoned_speech
from tests.desktop.silent_server import SilentServer
from tests.server_harness import start_server


@pytest.fixture
def app_parts(qtbot, tmp_path):
    yield from make_app_parts(qtbot, tmp_path)


def make_app_parts(qtbot, tmp_path):
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
        with qtbot.waitSignal(controller.recording, timeout=30_000, check_params_cb=bool):
            assert window.start_dictation(source, "Lamps")  # returns at once; connects later
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


# ---- starting never blocks the GUI ---------------------------------------------------------
def other_loop_tasks(controller) -> list[str]:
    """Names of the tasks left on the controller's network loop (besides the asking one)."""
    async def names() -> list[str]:
        return sorted(t.get_name() for t in asyncio.all_tasks() if t is not asyncio.current_task())

    return controller.loop.submit(names()).result(5)


def test_start_never_blocks_the_gui_and_a_hung_server_falls_back_to_local(qtbot, app_parts):
    """The chosen server answers its health probe but never the WebSocket handshake: the
    window keeps running (a 50 ms timer keeps firing) until the start falls back to this
    computer, and what was said while connecting is transcribed."""
    window, controller, history, journal, _ = app_parts
    ticks: list[float] = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.monotonic()))
    timer.start(50)
    with SilentServer(healthy=True) as hung:
        window.set_server(hung.url)
        source = FileSource(DEV / "sherpa-test-wavs/8k.wav", realtime=True)
        with qtbot.waitSignal(controller.finished, timeout=90_000) as done:
            with qtbot.waitSignal(controller.recording, timeout=60_000, check_params_cb=bool):
                assert window.start_dictation(source, "Hung")
                returned = time.monotonic()
                assert controller.is_connecting and window.record_button.text() == "■ Stop"
                assert [e.status for e in journal.entries()] == ["recording"]  # capturing
            connected = time.monotonic()
        qtbot.waitUntil(lambda: hung.open_connections == 0, timeout=10_000)
        assert hung.handshakes == 1
    timer.stop()
    assert connected - returned >= 4  # the hung handshake took its 5 s connect timeout ...
    during = [returned] + [t for t in ticks if returned < t < connected] + [connected]
    assert max(b - a for a, b in itertools.pairwise(during)) < 2.0  # ... not the GUI's
    record = history.get(done.args[0])
    assert record.server == "This computer"
    assert "these thoughts" in record.text.lower()  # said while connecting, kept
    assert "apprehension" in record.text.lower()
    assert [e.status for e in journal.entries()] == ["done"]


def test_a_start_that_times_out_is_cancelled_cleanly(qtbot, app_parts):
    window, controller, history, journal, _ = app_parts
    controller.start_timeout_s = 1.5
    with SilentServer(healthy=True) as hung:
        window.set_server(hung.url)
        source = FileSource(DEV / "sherpa-test-wavs/1.wav", realtime=True)
        with qtbot.waitSignal(controller.start_failed, timeout=30_000) as failed:
            assert window.start_dictation(source, "Never")
        qtbot.waitUntil(lambda: hung.open_connections == 0, timeout=10_000)  # no orphan
        assert hung.handshakes == 1
    assert failed.args[0] == "Could not start: no server answered within 1.5 s."
    assert window.message.text() == failed.args[0]
    assert window.record_button.text() == "● Record" and not controller.is_recording
    assert not source.running
    assert journal.entries() == [] and not list(journal.folder.iterdir())  # entry deleted
    assert history.list() == []
    assert other_loop_tasks(controller) == []  # nothing left running on the loop
    window.set_server(None, mode="local")  # and the next dictation starts normally
    with qtbot.waitSignal(controller.finished, timeout=60_000) as done:
        assert window.start_dictation(FileSource(DEV / "sherpa-test-wavs/8k.wav",
                                                 realtime=False), "Next")
    assert "apprehension" in history.get(done.args[0]).text.lower()


# ---- failed finals -------------------------------------------------------------------------
def write_poisoned(folder: Path) -> tuple[Path, tuple[float, float]]:
    audio, span = poisoned_speech()
    wav = folder / "poisoned.wav"
    sf.write(wav, audio, 16000, subtype="FLOAT")  # keeps the full-scale sample exact
    return wav, span


def test_a_failed_final_is_retried_locally_and_the_journal_is_done_only_at_the_end(
        qtbot, app_parts, tmp_path):
    window, controller, history, journal, _ = app_parts
    wav, (p0, p1) = write_poisoned(tmp_path)
    remote = start_server("--workers", "1", env=POISON)
    at_finals: list[list[str]] = []
    controller.final.connect(lambda *_: at_finals.append([e.status for e in journal.entries()]))
    try:
        window.set_server(remote.url)
        with qtbot.waitSignal(controller.finished, timeout=240_000) as done:
            assert window.start_dictation(FileSource(wav, realtime=False), "Poison")
        restarts = remote.health()["worker_restarts"]
    finally:
        remote.stop()
    assert restarts >= 2  # the office box's worker really died on it
    record = history.get(done.args[0])
    assert record.segments and all(s.text for s in record.segments), record.segments
    middle = " ".join(s.text for s in record.segments if s.start < p1 and s.end > p0)
    assert "not an ill" in normalize(middle), record.text  # the poisoned sentence's words
    assert at_finals and all(st == ["recording"] for st in at_finals)
    assert [e.status for e in journal.entries()] == ["done"] and controller.last_complete


@pytest.fixture
def poisoned_local_app(qtbot, tmp_path, monkeypatch):
    """The app whose own embedded server dies on the poisoned segment too."""
    monkeypatch.setenv("EARSHOT_WORKER_FAULT", POISON["EARSHOT_WORKER_FAULT"])
    yield from make_app_parts(qtbot, tmp_path)


def test_a_segment_nothing_can_transcribe_keeps_the_journal_for_recovery(
        qtbot, poisoned_local_app, tmp_path):
    window, controller, history, journal, _ = poisoned_local_app
    wav, (p0, p1) = write_poisoned(tmp_path)
    window.set_server(None, mode="local")
    messages: list[str] = []
    controller.failed.connect(messages.append)
    with qtbot.waitSignal(controller.finished, timeout=240_000) as done:
        assert window.start_dictation(FileSource(wav, realtime=False), "Poison")
    record = history.get(done.args[0])
    failed = [s for s in record.segments if not s.text]
    assert len(failed) == 1 and failed[0].start < p1 and failed[0].end > p0
    assert "john dashwood" in normalize(record.text) and "cold hearted" in normalize(record.text)
    assert not controller.last_complete
    assert messages == ["1 segment(s) could not be transcribed by any server; the audio is "
                        "kept in the journal and offered for recovery at the next start."]
    (entry,) = journal.unfinished()  # still "recording": offered for recovery
    assert entry.pcm_path == Path(record.audio_path)
    assert journal.duration(entry) == pytest.approx(audio_duration(wav), abs=0.01)


# ---- audio lost by the sound system ----------------------------------------------------------
class FileWithOverrun(FileSource):
    """A file played as a microphone whose sound system loses 300 ms after the first
    second: the capture interface's own path for lost audio (silence of its length)."""

    LOST = 4800

    def _deliver(self, on_audio, chunk, started, emitted) -> bool:
        if emitted == 16_000:
            self._deliver_silence(Chunker(1600), on_audio, self.LOST)
        return super()._deliver(on_audio, chunk, started, emitted)


def test_audio_lost_by_the_sound_system_is_shown_live_and_kept_as_silence(qtbot, app_parts):
    window, controller, history, journal, _ = app_parts
    window.set_server(None, mode="local")
    wav = DEV / "sherpa-test-wavs/0.wav"
    with qtbot.waitSignal(controller.finished, timeout=60_000) as done:
        with qtbot.waitSignal(controller.audio_lost, timeout=30_000) as lost:
            assert window.start_dictation(FileWithOverrun(wav, realtime=True), "Overrun")
        assert lost.args == [300.0]
        assert window.message.text().startswith("300 ms of audio lost by the sound system")
    assert window.message.text().startswith("300 ms of audio lost by the sound system")
    (entry,) = journal.entries()
    assert journal.duration(entry) == pytest.approx(audio_duration(wav) + 0.3, abs=0.01)
    audio = journal.read(entry)
    assert not np.any(audio[16_000 : 16_000 + FileWithOverrun.LOST])  # the silence, in place
    record = history.get(done.args[0])
    assert record.duration == pytest.approx(audio_duration(wav) + 0.3, abs=0.01)
    assert "yellow lamps" in record.text.lower()
