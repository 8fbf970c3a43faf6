"""Preferences in real QSettings (an ini file), and the Preferences dialog (pytest-qt)."""

from __future__ import annotations

import pytest
from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QDialogButtonBox

from desktop.preferences import Preferences
from desktop.widgets.preferences_dialog import PreferencesDialog


@pytest.fixture
def settings(tmp_path):
    return QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)


def test_defaults_when_nothing_is_saved(settings):
    assert Preferences.load(settings) == Preferences(
        hotkey="<ctrl>+<alt>+d", hotkey_mode="toggle", insert_mode="off",
        spoken_commands=True, start_minimized=False)


def test_saved_preferences_come_back_from_the_file(settings, tmp_path):
    prefs = Preferences(hotkey="Ctrl+Shift+F9", hotkey_mode="hold", insert_mode="paste",
                        spoken_commands=False, start_minimized=True)
    assert prefs.hotkey == "<ctrl>+<shift>+<f9>"
    prefs.save(settings)
    again = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    assert Preferences.load(again) == prefs


def test_bad_saved_values_fall_back_one_by_one(settings, caplog):
    settings.setValue("hotkey/combination", "ctrl+hyper+q")
    settings.setValue("hotkey/mode", "hold")
    settings.setValue("insert/mode", "telepathy")
    settings.setValue("insert/spoken_commands", "false")
    settings.setValue("window/start_minimized", "maybe")
    prefs = Preferences.load(settings)
    assert prefs == Preferences(hotkey_mode="hold", spoken_commands=False)
    assert "unknown key 'hyper'" in caplog.text and "telepathy" in caplog.text


@pytest.mark.parametrize("field, value, why", [
    ("hotkey", "Ctrl+Shift+Space", "in-window shortcut"),
    ("hotkey_mode", "press", "toggle or hold"),
    ("insert_mode", "dictate", "off, type or paste"),
])
def test_invalid_preferences_are_refused(field, value, why):
    with pytest.raises(ValueError, match=why):
        Preferences(**{field: value})


def test_dialog_edits_and_validates(qtbot):
    dialog = PreferencesDialog(Preferences(), {"type": None, "off": None,
                                               "paste": "Paste mode needs a real display"})
    qtbot.addWidget(dialog)
    ok = dialog.buttons.button(QDialogButtonBox.StandardButton.Ok)
    assert dialog.hotkey_edit.text() == "Ctrl+Alt+D"
    paste = dialog.insert_picker.findData("paste")
    assert dialog.insert_picker.itemText(paste).endswith(
        "(unavailable: Paste mode needs a real display)")
    dialog.hotkey_edit.setText("Ctrl+Shift+Space")
    assert not ok.isEnabled() and "in-window shortcut" in dialog.hotkey_error.text()
    dialog.hotkey_edit.setText("super+f8")
    assert ok.isEnabled() and dialog.hotkey_error.text() == ""
    dialog.mode_picker.setCurrentIndex(dialog.mode_picker.findData("hold"))
    dialog.insert_picker.setCurrentIndex(dialog.insert_picker.findData("type"))
    dialog.spoken.setChecked(False)
    dialog.minimized.setChecked(True)
    ok.click()
    assert dialog.result() == PreferencesDialog.DialogCode.Accepted
    assert dialog.preferences() == Preferences(hotkey="<cmd>+<f8>", hotkey_mode="hold",
                                               insert_mode="type", spoken_commands=False,
                                               start_minimized=True)
