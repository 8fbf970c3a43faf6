"""Reusable Qt widgets of the desktop app (PySide6). Display only: no business logic.

- `TranscriptView`: live or stored transcript of one dictation (partials and finals).
- `LevelMeter`: microphone level bar with peak hold.
- `HistoryPane`: browse/search/rename/delete/export/copy past dictations over a `History`.
- `ServerStatus`: one-line, coloured connection state.

Thread rule: GUI thread only, for every widget here.
"""

from desktop.widgets.history_pane import HistoryPane
from desktop.widgets.level_meter import LevelMeter
from desktop.widgets.server_status import ServerStatus
from desktop.widgets.transcript_view import TranscriptView

__all__ = ["HistoryPane", "LevelMeter", "ServerStatus", "TranscriptView"]
