"""The Qt binding itself. PySide6 6.12.0 on Python 3.11 releases a reference to None on
every call of a method that returns nothing and aborts the interpreter after a few thousand
calls (`Fatal Python error: none_dealloc`); pyproject.toml pins PySide6<6.12 for that."""

from __future__ import annotations

import sys

from PySide6.QtCore import QObject


def test_void_calls_keep_none_refcount() -> None:
    obj = QObject()
    before = sys.getrefcount(None)
    for _ in range(200):
        obj.setObjectName("x")
    assert sys.getrefcount(None) - before > -50
