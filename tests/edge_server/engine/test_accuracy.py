"""Accuracy of the catalog's models on long-form speech, through the file transcriber
(VAD segments, as `earshot transcribe` runs them).

References: `tests/data/speech/longform_transcripts.tsv`. `two_cities.wav` reads the opening
paragraph of Dickens' *A Tale of Two Cities* (public domain; the reference is the published
text: where the reader says "a season" for the book's "the season", every model is charged
alike); `beckett.wav` is six short sentences from Beckett's *Worstward Ho*.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_server.evaluation import read_references, word_error_rate
from edge_server.file_transcriber import FileTranscriber
from tests.conftest import LONGFORM

REFERENCES = Path(__file__).resolve().parents[2] / "data" / "speech" / "longform_transcripts.tsv"


def _longform_errors(engine) -> tuple[int, int, list[str]]:
    refs = read_references(REFERENCES)
    results = list(FileTranscriber(engine).transcribe_files(LONGFORM / r.path.name for r in refs))
    assert all(r.error is None for r in results), [r.error for r in results]
    texts = [r.transcript.text for r in results]
    score = word_error_rate([r.transcript for r in refs], texts)
    return score.errors, score.words, texts


@pytest.fixture(scope="module")
def tiny_result(engine):
    return _longform_errors(engine)


@pytest.fixture(scope="module")
def base_result(base_engine):
    return _longform_errors(base_engine)


def test_tiny_transcribes_long_form_speech_within_five_percent(tiny_result):
    errors, words, texts = tiny_result
    assert words > 120
    assert errors / words < 0.05, texts


def test_base_makes_fewer_long_form_errors_than_tiny(tiny_result, base_result):
    tiny_errors, words, _ = tiny_result
    base_errors, _, texts = base_result
    assert base_errors < tiny_errors, texts
    assert base_errors / words < 0.03, texts
