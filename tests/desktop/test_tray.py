"""The tray icon with pytest-qt: its menu starts and stops a real dictation (embedded
server, real model), picks the server like the window's picker, and each state has its
own icon and tooltip."""

from __future__ import annotations

import pytest
from PySide6.QtCore import QSettings

from desktop.capture import FileSource
from desktop.controller import DictationController
from desktop.history import History
from desktop.journal import Journal
from desktop.lan.discovery import DiscoveredServer
from desktop.tray import TRAY_STATES, TrayIcon, state_icon
from desktop.window import MainWindow
from tests.conftest import DEV


@pytest.fixture
def parts(qtbot, tmp_path):
    history = History(tmp_path / "history.db")
    controller = DictationController(history, Journal(tmp_path / "journal"))
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    window = MainWindow(controller, settings)
    qtbot.addWidget(window)
    calls: list[str] = []
    tray = TrayIcon(controller, window.server_picker, toggle=window.toggle_recording,
                    show_window=lambda: calls.append("show"),
                    preferences=lambda: calls.append("preferences"),
                    quit=lambda: calls.append("quit"), hotkey_name="Ctrl+Alt+D")
    yield window, controller, tray, calls
    controller.shutdown()
    history.close()


def image(icon) -> bytes:
    return bytes(icon.pixmap(32, 32).toImage().constBits())


def test_every_state_has_its_own_icon(qapp):
    images = {state: image(state_icon(state)) for state in TRAY_STATES}
    assert len(set(images.values())) == len(TRAY_STATES)


def test_controller_signals_set_icon_and_tooltip(parts):
    window, c, tray, _ = parts
    seen = []

    def look():
        seen.append(tray.state)
        assert image(tray.tray.icon()) == image(tray.icons[tray.state])
        return tray.tray.toolTip()

    assert look() == "Earshot: idle (Ctrl+Alt+D to dictate)"
    c.state.emit("connecting", "", "", "choosing a server")
    assert look() == "Earshot: listening (This computer)"
    c.state.emit("connected", "office-box", "cuda", "")
    assert look() == "Earshot: listening, sending to office-box"
    c.state.emit("error", "office-box", "cuda", "connection lost")  # the next is tried
    assert tray.state == "remote"
    c.state.emit("fallback", "This computer", "cpu", "")
    assert look() == "Earshot: listening, local fallback (This computer)"
    c.state.emit("offline", "", "", "no server can take the audio")
    assert look() == "Earshot: error: no server can take the audio"
    c.recording.emit(False)  # the error stays until the next start
    assert tray.state == "error"
    c.recording.emit(True)
    assert look() == "Earshot: listening (This computer)"
    c.failed.emit("Could not start: no server answered within 15 s.")
    assert look() == "Earshot: error: Could not start: no server answered within 15 s."
    c.local_server.emit("ready")
    assert look().startswith("Earshot: idle")
    c.local_server.emit("failed: model 'x' is not installed")
    assert look() == ("Earshot: error: the local speech engine could not start: failed: "
                      "model 'x' is not installed")
    # this computer when a remote server is the choice: the box failed, this is a fallback
    window.set_server("https://box.lan:8765")
    c.state.emit("connected", "This computer", "cpu", "")
    assert tray.state == "fallback"
    window.set_server(None, mode="local")
    c.state.emit("connected", "This computer", "cpu", "")
    assert tray.state == "listening"
    assert set(seen) == set(TRAY_STATES)
    with pytest.raises(ValueError, match="unknown tray state"):
        tray.set_state("sleeping")


def test_menu_starts_and_stops_a_real_dictation(qtbot, parts):
    window, controller, tray, _ = parts
    with qtbot.waitSignal(controller.local_server, timeout=120_000,
                          check_params_cb=lambda s: s != "starting"):
        controller.start_local_server()
    assert tray.toggle_action.text() == "Start dictation"
    window.set_pending_source(FileSource(DEV / "sherpa-test-wavs/1.wav", realtime=True),
                              "From the tray")
    with qtbot.waitSignal(controller.recording, timeout=30_000, check_params_cb=bool):
        tray.toggle_action.trigger()
    assert tray.state == "listening" and tray.toggle_action.text() == "Stop dictation"
    qtbot.wait(2500)
    with qtbot.waitSignal(controller.finished, timeout=60_000) as done:
        tray.toggle_action.trigger()
    record = controller.history.get(done.args[0])
    assert record.title == "From the tray" and record.duration < 10  # stopped early
    assert tray.state == "idle" and tray.toggle_action.text() == "Start dictation"


def test_server_menu_is_the_window_pickers_choices(qtbot, parts):
    window, controller, tray, _ = parts
    picker = window.server_picker
    names = [a.text() for a in tray.server_actions()]
    assert names == [picker.itemText(i) for i in range(picker.count())]
    assert names[:2] == ["Automatic", "This computer"]
    box = DiscoveredServer(service="box._earshot._tcp.local.", name="office-box",
                           url="http://127.0.0.1:9", device="cuda", capacity=7,
                           token_required=False, models=("moonshine-tiny-en",), protocol=1,
                           server_id="abc", fingerprint="", tls=False, address="127.0.0.1",
                           auth="none")
    controller.servers_found.emit([box])
    names = [a.text() for a in tray.server_actions()]
    assert any(n.startswith("office-box (GPU, 7 free)") for n in names)
    assert [a.isChecked() for a in tray.server_actions()][:2] == [True, False]
    tray.server_actions()[1].trigger()  # "This computer"
    assert picker.currentIndex() == 1 and controller.choice.mode == "local"
    assert window.settings.value("server/mode") == "local"
    assert [a.isChecked() for a in tray.server_actions()][:2] == [False, True]
    tray.server_actions()[0].trigger()
    assert controller.choice.mode == "auto"


def test_other_actions_and_no_tray(parts):
    window, _, tray, calls = parts
    tray.show_action.trigger()
    tray.preferences_action.trigger()
    tray.quit_action.trigger()
    assert calls == ["show", "preferences", "quit"]
    asked = []
    window.preferences_requested.connect(lambda: asked.append(True))
    window.preferences_action.trigger()  # the window's Earshot › Preferences… menu entry
    assert asked == [True]
    window.show()
    window.hide_on_close = True  # with a tray, closing the window only hides it
    assert not window.close() and not window.isVisible()
    window.hide_on_close = False
    assert window.close()
    assert not TrayIcon.available()  # Qt offscreen has no system tray
    assert tray.show() is False and not tray.tray.isVisible()
