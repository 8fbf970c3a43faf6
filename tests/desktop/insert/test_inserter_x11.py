"""Text at the cursor on a real X server: a TextInserter types / pastes finals into another
application's text field (tests.text_field_app) that has the focus, under Xvfb.

The inserter runs in a subprocess (tests.insert_driver) with Qt on xcb and DISPLAY set,
since this pytest process runs Qt offscreen. The field's text is read back from the file
the field app rewrites on every change.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests import xdisplay
from tests.text_field_app import TextField

xserver = xdisplay.xserver
REPO = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.timeout(90)

FINALS = [
    "Hello there.",
    "how are you",                      # mid-sentence after this: the next keeps its casing
    "Doing fine, thanks.",
    "New line.",                        # a command as a whole segment
    "dear John,",                       # after a newline: capitalised, no space
    "the end. New paragraph.",          # a command at a segment's end
    "Chapter two. Scratch that.",       # scratched inside its segment: never sent
    "Scratch that.",                    # removes " the end.\n\n" (11 backspaces)
    "ça va, très bien.",
    "scratch that",                     # removes " Ça va, très bien." (non-ASCII counted)
    "café au lait — “quoted” naïve 🙂!",
    "new paragraph",
    "P.S. done",
]
EXPECTED = ("Hello there. How are you Doing fine, thanks.\nDear John, café au lait — "
            "“quoted” naïve 🙂!\n\nP.S. done")
EXPECTED_UNITS = ["Hello there.", " How are you", " Doing fine, thanks.", "\n",
                  "Dear John,", " café au lait — “quoted” naïve 🙂!", "\n\n", "P.S. done"]


def drive(server: xdisplay.XServer, mode: str, finals: list[str], *args: str) -> dict:
    """Run tests.insert_driver: a TextInserter in `mode` fed `finals`; its JSON report."""
    out = subprocess.run([sys.executable, "-m", "tests.insert_driver", "--mode", mode, *args],
                         input=json.dumps(finals), env=server.env(), cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"driver failed ({out.returncode}): {out.stdout}{out.stderr}"
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture
def field(xserver: xdisplay.XServer, tmp_path: Path, request: pytest.FixtureRequest):
    """A focused text field; optional clipboard text through indirect parametrisation."""
    clipboard = getattr(request, "param", None)
    f = TextField(xserver, tmp_path / "field.txt", f"Field {tmp_path.name}", clipboard=clipboard)
    try:
        yield f
    finally:
        f.close()


def test_type_mode_puts_the_finals_into_the_focused_app(xserver, field: TextField) -> None:
    report = drive(xserver, "type", FINALS)
    assert report["errors"] == []
    assert report["inserted"] == EXPECTED_UNITS
    assert field.wait_text(EXPECTED) == EXPECTED
    assert "focus-lost" not in field.close()  # the inserter never took the focus


@pytest.mark.parametrize("field", ["previous clipboard ✓"], indirect=True)
def test_paste_mode_pastes_and_restores_the_clipboard(xserver, field: TextField) -> None:
    report = drive(xserver, "paste", FINALS)
    assert report["errors"] == []
    assert report["inserted"] == EXPECTED_UNITS
    assert field.wait_text(EXPECTED) == EXPECTED
    # what the field app had put on the clipboard (fetched from it over X) is back
    assert report["clipboard"] == "previous clipboard ✓"
    assert "text/plain" in report["clipboard_formats"]
    assert "focus-lost" not in field.close()


def test_paste_mode_leaves_an_empty_clipboard_empty(xserver, field: TextField) -> None:
    report = drive(xserver, "paste", ["One.", "two"])
    assert field.wait_text("One. Two") == "One. Two"
    assert report["clipboard"] == ""
    assert report["clipboard_formats"] == []


def test_commands_off_and_known_preceding_text(xserver, field: TextField) -> None:
    report = drive(xserver, "type", ["new line", "scratch that."], "--no-commands",
                   "--preceding", "")
    assert report["inserted"] == ["New line", " scratch that."]
    assert field.wait_text("New line scratch that.") == "New line scratch that."


def test_spare_keycodes_are_reused_safely(xserver, field: TextField, monkeypatch) -> None:
    """More characters outside the layout than spare keycodes: each reuse of a keycode
    waits until the target can have read the previous mapping."""
    from desktop.insert.keystrokes import X11Scratch

    monkeypatch.setenv("DISPLAY", xserver.display)
    scratch = X11Scratch()
    try:
        scratch._free = scratch._free[:2]  # as if the keyboard had only two spare keys
        text = "αβγδ—αε"
        for ch in text:
            scratch.type_char(ch)
    finally:
        scratch.close()
    assert field.wait_text(text) == text
