"""The one error text insertion raises (re-exported by desktop.insert)."""

from __future__ import annotations


class InsertionError(RuntimeError):
    """Text could not be put at the cursor. The message is for the user: what failed and
    what to do about it (what to install, which mode to pick, which permission to grant)."""
