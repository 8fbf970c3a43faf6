"""Text at the cursor: each final of a dictation inserted into the focused application.

    from desktop.insert import TextInserter, InsertionError, available_modes

    inserter = TextInserter("type")        # "type" | "paste" | "off"; GUI thread only
    inserter.begin()                       # a dictation starts (may raise InsertionError)
    inserter.insert_final("Hello there.")  # each final, in order; partials never
    inserter.when_idle(app.quit)           # paste mode: wait for the clipboard restore

Modules: `joiner` (spacing, capitalisation, spoken commands: pure logic), `keystrokes`
(pynput / wtype), `clipboard_paste` (QClipboard + Ctrl+V), `inserter` (the facade).
docs/insertion.md explains the modes and their platform limits.
"""

from desktop.insert.errors import InsertionError
from desktop.insert.inserter import MODES, TextInserter, available_modes

__all__ = ["MODES", "InsertionError", "TextInserter", "available_modes"]
