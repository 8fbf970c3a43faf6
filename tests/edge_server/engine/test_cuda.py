"""The CUDA path. Tests marked `cuda` need a working CUDA provider (onnxruntime-gpu and a
GPU): they are skipped elsewhere and run by `bench/gpu_check.py`. The device bookkeeping
they rely on (IO-bound outputs, placement) is checked on CPU here too."""

from __future__ import annotations

import numpy as np
import pytest

from edge_server.engine import EngineError, create_engine
from edge_server.engine.placement import CUDA
from edge_server.evaluation import normalize, word_error_rate
from tests.conftest import SENTENCE_SETS, SHIPPED_MODELS, dev_rows
from tests.edge_server.engine.conftest import int8_form


def cuda_usable() -> bool:
    from edge_server.engine.runtime import SessionFactory

    try:
        SessionFactory(device="cuda").create(SHIPPED_MODELS / "silero-vad" / "silero_vad.onnx")
    except EngineError:
        return False
    return True


needs_cuda = pytest.mark.skipif(not cuda_usable(), reason="no working CUDA provider here")


def bound_devices(engine, audio) -> dict[str, set[str]]:
    """Devices of the decoder's bound outputs during one transcription, by output kind."""
    seen: dict[str, set[str]] = {"logits": set(), "present": set()}
    run = engine.decoder.run_with_iobinding

    def spy(binding, *args, **kwargs):
        result = run(binding, *args, **kwargs)
        for name, value in zip(engine.output_names, binding.get_outputs(), strict=True):
            seen["logits" if name == "logits" else "present"].add(value.device_name().lower())
        return result

    engine.decoder.run_with_iobinding = spy
    try:
        engine.transcribe(audio)
    finally:
        engine.decoder.run_with_iobinding = run
    return seen


def test_io_binding_on_cpu_keeps_outputs_on_the_session_device(engine, read):
    assert bound_devices(engine, read("sherpa-test-wavs/0.wav")) == {
        "logits": {"cpu"}, "present": {"cpu"}}


@pytest.fixture(scope="module")
def cuda_engines():
    """model id -> engine on CUDA (the model's default CUDA form) for tiny and base."""
    engines = {}
    for model_id in ("moonshine-tiny-en", "moonshine-base-en"):
        engines[model_id] = create_engine(model_id, device="cuda", threads=2)
    return engines


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("model_id", ["moonshine-tiny-en", "moonshine-base-en"])
def test_model_really_runs_on_cuda(cuda_engines, model_id):
    eng = cuda_engines[model_id]
    print(f"{model_id} ({eng.form} form): {eng.placement.summary()}")
    assert eng.placement.runs_on(CUDA), eng.placement.summary()
    assert eng.provider == CUDA and eng.device == "cuda"
    assert eng.cost is not None


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("model_id", ["moonshine-tiny-en", "moonshine-base-en"])
def test_cache_stays_on_the_gpu(cuda_engines, model_id, read):
    seen = bound_devices(cuda_engines[model_id], read("sherpa-test-wavs/0.wav"))
    assert seen == {"logits": {"cpu"}, "present": {"cuda"}}


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("model_id", ["moonshine-tiny-en", "moonshine-base-en"])
def test_cuda_matches_cpu_and_batches(cuda_engines, model_id, read):
    eng = cuda_engines[model_id]
    rows = dev_rows(SENTENCE_SETS)
    audios = [read(r["path"]) for r in rows]
    refs = [r["transcript"] for r in rows]
    cpu = create_engine(model_id, device="cpu", threads=2, form=eng.form)
    on_cpu = [cpu.transcribe(a) for a in audios]
    single = [eng.transcribe(a) for a in audios]
    batched = eng.transcribe_batch(audios)
    for other in (on_cpu, batched):  # float rounding differs by device and batch shape
        same = sum(normalize(a) == normalize(b) for a, b in zip(single, other, strict=True))
        assert same >= 0.9 * len(audios), list(zip(single, other, strict=True))
        assert abs(word_error_rate(refs, other).wer - word_error_rate(refs, single).wer) <= 0.01


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("model_id", ["moonshine-tiny-en", "moonshine-base-en"])
def test_a_draft_prefix_on_cuda_gives_the_free_decode(cuda_engines, model_id, read):
    """A partial's draft (the previous partial's tokens, then a wrong tail) is prefilled
    and the self-attention cache cut back to the agreed tokens on the device: the free
    decode's text, up to float rounding at a near tie (at most one clip of four)."""
    eng = cuda_engines[model_id]
    clips = [read(r["path"]) for r in dev_rows(SENTENCE_SETS)[:4]]
    free = [eng.decode_batch([a])[0] for a in clips]
    drafts = [ref.tokens[:5] + ref.tokens[6:9] for ref in free]
    offered, kept = eng.stats.prefix_offered, eng.stats.prefix_kept
    drafted = [eng.decode_batch([a], [d])[0] for a, d in zip(clips, drafts, strict=True)]
    assert sum(d.text == f.text for d, f in zip(drafted, free, strict=True)) >= 3, drafted
    assert 0 < eng.stats.prefix_kept - kept < eng.stats.prefix_offered - offered


@pytest.mark.cuda
@needs_cuda
def test_int8_form_is_refused_on_cuda_and_auto_says_cpu():
    with pytest.raises(EngineError, match="Use the float form"):
        create_engine("moonshine-tiny-en", device="cuda", form=int8_form("moonshine-tiny-en"))
    eng = create_engine("moonshine-tiny-en", device="auto", form=int8_form("moonshine-tiny-en"))
    assert eng.device == "cpu"


def test_auto_with_a_cpu_only_form_runs_on_cpu_where_cuda_is_listed(monkeypatch):
    """Found on a GPU (bench/gpu_check, 2026-11-30): with onnxruntime-gpu, 'auto' picked
    CUDA for the int8 form asked for by name and raised instead of running on the CPU. Here
    the CUDA listing is what cannot exist without a GPU build; the rest is real."""
    from edge_server.engine.runtime import SessionFactory

    monkeypatch.setattr(SessionFactory, "cuda_listed", lambda self: True)
    eng = create_engine("moonshine-tiny-en", device="auto", form=int8_form("moonshine-tiny-en"))
    assert eng.device == "cpu" and eng.form == int8_form("moonshine-tiny-en")
    assert isinstance(eng.transcribe(np.zeros(16000, np.float32)), str)
