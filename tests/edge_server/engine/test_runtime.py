import pytest

from edge_server.engine import EngineError, create_engine
from edge_server.engine.runtime import SessionFactory, installed_flavours
from tests.conftest import SHIPPED_MODELS


def test_exactly_one_onnxruntime_flavour_is_installed():
    assert len(installed_flavours()) == 1


def test_unknown_device():
    with pytest.raises(EngineError, match="unknown device 'tpu'"):
        SessionFactory(device="tpu")


def test_cuda_requested_without_cuda_is_a_clear_error():
    # a graph with standard ops only (CUDA-capable): the refusal is about this machine
    with pytest.raises(EngineError, match="device 'cuda' requested but CUDA is not usable"):
        SessionFactory(device="cuda").create(SHIPPED_MODELS / "silero-vad" /
                                             "silero_vad.onnx")


def test_auto_falls_back_to_cpu_and_says_so(engine):
    assert engine.provider == "CPUExecutionProvider"
    assert engine.device == "cpu"


def test_vad_model_is_not_an_asr_engine():
    with pytest.raises(EngineError, match="is a vad model"):
        create_engine("silero-vad")
