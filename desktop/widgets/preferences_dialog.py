"""The Preferences dialog: global hotkey and its mode, text insertion, start in the tray.

`PreferencesDialog(prefs, insert_availability)`; `exec()` then `.preferences()` gives
the edited, validated Preferences (the OK button stays disabled while the hotkey text is
invalid, with the reason shown). Insertion modes that cannot work here are listed with
why (from `desktop.insert.available_modes()`), not hidden. GUI thread only.
"""

from __future__ import annotations

from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QVBoxLayout,
    QWidget,
)

from desktop.hotkey import display_name, parse_combination
from desktop.preferences import INSERT_MODES, Preferences

MODE_LABELS = {"toggle": "Toggle: press to start, press again to stop",
               "hold": "Hold: dictate while the keys are held (push-to-talk)"}
INSERT_LABELS = {"off": "Off: text stays in Earshot's window",
                 "type": "Type it where the cursor is",
                 "paste": "Paste it through the clipboard (restored afterwards)"}


class PreferencesDialog(QDialog):
    def __init__(self, prefs: Preferences,
                 insert_availability: dict[str, str | None] | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Earshot preferences")
        self._prefs = prefs
        self.hotkey_edit = QLineEdit(display_name(prefs.hotkey))
        self.hotkey_edit.setToolTip("e.g. Ctrl+Alt+D, Ctrl+Shift+F9, Super+Space")
        self.hotkey_error = QLabel("")
        self.hotkey_error.setStyleSheet("color: #b91c1c;")
        self.hotkey_error.setWordWrap(True)
        self.mode_picker = QComboBox()
        for mode, label in MODE_LABELS.items():
            self.mode_picker.addItem(label, mode)
        self.mode_picker.setCurrentIndex(self.mode_picker.findData(prefs.hotkey_mode))
        self.insert_picker = QComboBox()
        availability = insert_availability or {}
        for mode in INSERT_MODES:
            why = availability.get(mode)
            self.insert_picker.addItem(INSERT_LABELS[mode] + (f" (unavailable: {why})"
                                                               if why else ""), mode)
        self.insert_picker.setCurrentIndex(self.insert_picker.findData(prefs.insert_mode))
        self.spoken = QCheckBox('Spoken commands ("new line", "new paragraph", '
                                '"scratch that")')
        self.spoken.setChecked(prefs.spoken_commands)
        self.minimized = QCheckBox("Start minimised to the tray")
        self.minimized.setChecked(prefs.start_minimized)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok
                                        | QDialogButtonBox.StandardButton.Cancel)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        self.hotkey_edit.textChanged.connect(self._check_hotkey)

        form = QFormLayout()
        form.addRow("Global hotkey:", self.hotkey_edit)
        form.addRow("", self.hotkey_error)
        form.addRow("Hotkey mode:", self.mode_picker)
        form.addRow("Insert text:", self.insert_picker)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.spoken)
        layout.addWidget(self.minimized)
        layout.addWidget(self.buttons)

    def _check_hotkey(self, text: str) -> None:
        try:
            parse_combination(text)
        except ValueError as exc:
            self.hotkey_error.setText(str(exc))
            self.buttons.button(QDialogButtonBox.StandardButton.Ok).setEnabled(False)
            return
        self.hotkey_error.setText("")
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setEnabled(True)

    def preferences(self) -> Preferences:
        """The edited preferences (raises ValueError only if the hotkey is invalid, which
        the OK button prevents)."""
        return Preferences(hotkey=self.hotkey_edit.text(),
                           hotkey_mode=self.mode_picker.currentData(),
                           insert_mode=self.insert_picker.currentData(),
                           spoken_commands=self.spoken.isChecked(),
                           start_minimized=self.minimized.isChecked())
