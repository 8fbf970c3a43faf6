"""The engine against the reference decoder (sherpa-onnx's Moonshine v2 recognizer).

One by one, the engine must give sherpa-onnx's exact text (same model, same ONNX Runtime
series). Batched, Moonshine's int8 decoder quantizes activations per tensor, so rows of a
batch nudge each other's rounding: the test pins how far that may go (docs/engine.md).
"""

from __future__ import annotations

import numpy as np
import pytest

from edge_server.evaluation import normalize, word_error_rate
from tests.conftest import DEV, SHARED, dev_rows

MODEL = SHARED / "models" / "moonshine-tiny-en"


@pytest.fixture(scope="module")
def sherpa(engine, tmp_path_factory):
    sherpa_onnx = pytest.importorskip("sherpa_onnx")
    tokens = tmp_path_factory.mktemp("tok") / "tokens.txt"
    tokens.write_text(engine.tokenizer.sherpa_tokens_txt())
    rec = sherpa_onnx.OfflineRecognizer.from_moonshine_v2(
        encoder=str(MODEL / "encoder_model.ort"),
        decoder=str(MODEL / "decoder_model_merged.ort"),
        tokens=str(tokens), num_threads=2,
    )

    def decode(audio: np.ndarray) -> str:
        stream = rec.create_stream()
        stream.accept_waveform(16_000, audio)
        rec.decode_stream(stream)
        return stream.result.text.strip()

    return decode


@pytest.fixture(scope="module")
def corpus(read):
    """All dev sentences plus every 8th alphanumeric clip."""
    rows = dev_rows(("sherpa-test-wavs", "librispeech-test-clean-kw", "pocketsphinx-testdata"))
    rows += dev_rows(("moonshine-alphanumeric",))[::8]
    return rows, [read(r["path"]) for r in rows]


def test_one_by_one_equals_sherpa_onnx_exactly(engine, sherpa, corpus):
    rows, audios = corpus
    mismatches = [
        (r["path"], ours, ref)
        for r, a in zip(rows, audios, strict=True)
        if (ours := engine.transcribe(a)) != (ref := sherpa(a))
    ]
    assert mismatches == [], mismatches


def test_batch_matches_one_by_one(engine, corpus):
    rows, audios = corpus
    single = [engine.transcribe(a) for a in audios]
    batched: list[str] = []
    for i in range(0, len(audios), 16):
        batched += engine.transcribe_batch(audios[i : i + 16])
    same = sum(normalize(s) == normalize(b) for s, b in zip(single, batched, strict=True))
    assert same / len(audios) >= 0.9, list(zip(single, batched, strict=True))
    refs = [r["transcript"] for r in rows[:18]]
    assert word_error_rate(refs, batched[:18]).wer <= word_error_rate(refs, single[:18]).wer + 0.01


def test_identical_rows_in_a_batch_decode_identically(engine, read):
    audio = read("sherpa-test-wavs/0.wav")
    alone = engine.transcribe(audio)
    assert engine.transcribe_batch([audio, audio, audio]) == [alone] * 3


def test_batch_keeps_order_and_handles_empty_and_tiny_input(engine, read):
    a = read("pocketsphinx-testdata/" + next(
        p.name for p in sorted((DEV / "pocketsphinx-testdata").iterdir()) if p.suffix == ".wav"))
    tiny = np.zeros(100, np.float32)
    out = engine.transcribe_batch([np.zeros(0, np.float32), a, tiny])
    assert out[0] == ""
    assert out[1] and isinstance(out[2], str)


def test_bad_engine_input(engine):
    from edge_server.engine import EngineError

    with pytest.raises(EngineError, match="NaN"):
        engine.transcribe(np.array([0.0, np.nan], np.float32))
    with pytest.raises(EngineError, match="1-D"):
        engine.transcribe(np.zeros((2, 100), np.float32))
