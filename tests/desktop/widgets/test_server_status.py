"""ServerStatus: text and colour for every state."""

from __future__ import annotations

import pytest
from PySide6.QtGui import QPalette

from desktop.widgets.server_status import AMBER, GREEN, GREY, RED, STATES, ServerStatus


@pytest.fixture
def status(qtbot) -> ServerStatus:
    widget = ServerStatus()
    qtbot.addWidget(widget)
    return widget


@pytest.mark.parametrize(
    ("state", "text", "colour"),
    [
        ("connecting", "● Connecting — office-gpu", GREY),
        ("connected", "● Connected — office-gpu (GPU) · 42 ms", GREEN),
        ("reconnecting", "● Reconnecting — office-gpu", AMBER),
        ("fallback", "● Local fallback — local (CPU)", AMBER),
        ("busy", "● Server busy (live text paused) — local (CPU)", AMBER),
        ("loading", "● Loading model — local (CPU)", AMBER),
        ("offline", "● Offline — office-gpu", RED),
        ("error", "● Error — office-gpu", RED),
    ],
)
def test_text_and_colour_per_state(status: ServerStatus, state, text, colour) -> None:
    device = "GPU" if state == "connected" else "cpu" if text.endswith("(CPU)") else None
    server = "local" if device == "cpu" else "office-gpu"
    latency = 42.4 if state == "connected" else None
    status.show_state(state, server, device, latency, detail=f"detail for {state}")
    assert status.state() == state
    assert status.text() == text
    assert status.palette().color(QPalette.ColorRole.WindowText) == colour
    assert status.color() == colour
    assert status.toolTip() == f"detail for {state}"


def test_every_state_is_covered() -> None:
    assert set(STATES) == {
        "connecting",
        "connected",
        "reconnecting",
        "fallback",
        "busy",
        "offline",
        "error",
        "loading",
    }


def test_parts_are_left_out_when_not_given(status: ServerStatus) -> None:
    status.show_state("connected", "edge.lan", device="cuda", latency_ms=7.6)
    assert status.text() == "● Connected — edge.lan (GPU) · 8 ms"
    status.show_state("connected", "edge.lan", latency_ms=float("nan"))
    assert status.text() == "● Connected — edge.lan"
    status.show_state("error", "", detail="")
    assert status.text() == "● Error"
    assert status.toolTip() == ""


def test_server_names_are_plain_text(status: ServerStatus) -> None:
    status.show_state("connected", "<b>box</b>")
    assert status.text() == "● Connected — <b>box</b>"
    assert status.textFormat().name == "PlainText"


def test_starts_offline_and_rejects_unknown_states(status: ServerStatus) -> None:
    assert status.state() == "offline"
    assert status.text() == "● Offline"
    with pytest.raises(ValueError, match="unknown server state"):
        status.show_state("sleeping", "x")
    assert status.state() == "offline"
