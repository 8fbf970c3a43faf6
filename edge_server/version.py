"""Earshot's version, from the installed package's metadata.

In a PyInstaller bundle the package metadata is copied in at build time
(packaging/earshot.spec), so the same lookup works frozen. Pure; any thread.
"""

from __future__ import annotations

from importlib import metadata

UNKNOWN = "unknown"


def version() -> str:
    """The `earshot` distribution's version, or "unknown" when it is not installed."""
    try:
        return metadata.version("earshot")
    except metadata.PackageNotFoundError:
        return UNKNOWN
