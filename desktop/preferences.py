"""The user's dictate-anywhere preferences, kept in QSettings.

    prefs = Preferences.load(settings)      # bad or missing values -> defaults (logged)
    prefs.save(settings)

Keys: hotkey/combination (pynput form, default "<ctrl>+<alt>+d"), hotkey/mode
(toggle|hold), insert/mode (off|type|paste), insert/spoken_commands (bool),
window/start_minimized (bool: start with only the tray icon, when there is a tray).
Command-line flags override these for one run without saving them. GUI thread only
(QSettings is not shared across threads here).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from PySide6.QtCore import QSettings

from desktop.hotkey import DEFAULT_COMBINATION, MODES, parse_combination

log = logging.getLogger(__name__)
INSERT_MODES = ("off", "type", "paste")


def _as_bool(value: object, default: bool) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
        return True
    if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
        return False
    if isinstance(value, int):
        return bool(value)
    return default


@dataclass(frozen=True)
class Preferences:
    hotkey: str = DEFAULT_COMBINATION
    hotkey_mode: str = "toggle"  # toggle | hold
    insert_mode: str = "off"  # off | type | paste
    spoken_commands: bool = True
    start_minimized: bool = False

    def __post_init__(self) -> None:
        """Raises ValueError naming the bad field."""
        object.__setattr__(self, "hotkey", parse_combination(self.hotkey))
        if self.hotkey_mode not in MODES:
            raise ValueError(f"hotkey mode {self.hotkey_mode!r}: use toggle or hold")
        if self.insert_mode not in INSERT_MODES:
            raise ValueError(f"insert mode {self.insert_mode!r}: use off, type or paste")

    @classmethod
    def load(cls, settings: QSettings) -> Preferences:
        """What is saved; each missing or invalid value is its default (logged)."""
        prefs = cls()
        raw = {
            "hotkey": settings.value("hotkey/combination", prefs.hotkey),
            "hotkey_mode": settings.value("hotkey/mode", prefs.hotkey_mode),
            "insert_mode": settings.value("insert/mode", prefs.insert_mode),
        }
        for field, value in raw.items():
            try:
                prefs = replace(prefs, **{field: str(value)})
            except ValueError as exc:
                log.warning("ignoring the saved %s: %s", field, exc)
        return replace(
            prefs,
            spoken_commands=_as_bool(settings.value("insert/spoken_commands"),
                                     prefs.spoken_commands),
            start_minimized=_as_bool(settings.value("window/start_minimized"),
                                     prefs.start_minimized))

    def save(self, settings: QSettings) -> None:
        settings.setValue("hotkey/combination", self.hotkey)
        settings.setValue("hotkey/mode", self.hotkey_mode)
        settings.setValue("insert/mode", self.insert_mode)
        settings.setValue("insert/spoken_commands", self.spoken_commands)
        settings.setValue("window/start_minimized", self.start_minimized)
        settings.sync()
