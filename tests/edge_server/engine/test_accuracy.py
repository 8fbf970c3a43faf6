"""Accuracy of the catalog's models on long-form speech, through the installed
`earshot eval` (VAD segments, as `earshot transcribe` runs them).

References: `tests/data/speech/longform_transcripts.tsv`, read with `--audio-dir` pointing
at the long-form files. `two_cities.wav` reads the opening paragraph of Dickens' *A Tale
of Two Cities* (public domain; the reference is the published text: where the reader says
"a season" for the book's "the season", every model is charged alike); `beckett.wav` is
six short sentences from Beckett's *Worstward Ho*.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import LONGFORM
from tests.edge_server.engine.conftest import model_available

REFERENCES = Path(__file__).resolve().parents[2] / "data" / "speech" / "longform_transcripts.tsv"
EARSHOT = Path(sys.executable).with_name("earshot")  # the installed command


def _eval(model: str) -> dict:
    out = subprocess.run([str(EARSHOT), "eval", str(REFERENCES), "--audio-dir", str(LONGFORM),
                          "--model", model, "--device", "cpu", "--json", "--show-errors"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def tiny():
    return _eval("moonshine-tiny-en")


@pytest.fixture(scope="module")
def base():
    if not model_available("moonshine-base-en"):
        pytest.fail("moonshine-base-en is not installed (earshot models fetch moonshine-base-en)")
    return _eval("moonshine-base-en")


def test_tiny_transcribes_long_form_speech_within_five_percent(tiny):
    score = tiny["sets"]["ALL"]
    assert score["utterances"] == 2 and score["words"] > 120
    assert score["wer"] < 0.05, tiny["errors"]


def test_base_makes_fewer_long_form_errors_than_tiny(tiny, base):
    assert base["sets"]["ALL"]["errors"] < tiny["sets"]["ALL"]["errors"], base["errors"]
    assert base["sets"]["ALL"]["wer"] < 0.03, base["errors"]
