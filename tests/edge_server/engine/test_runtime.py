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


def test_preloading_cuda_libraries_keeps_onnxruntimes_complaints_off_stdout(capsys):
    """onnxruntime-gpu's preload_dlls prints the libraries it could not load; stdout is
    the transcript's (`earshot transcribe`), so those lines go to stderr. The GPU build
    cannot be installed beside the CPU one here: a stand-in module plays it."""
    from edge_server.engine.runtime import preload_cuda_libraries

    calls = []

    class FakeOnnxruntimeGpu:
        @staticmethod
        def preload_dlls():
            calls.append(1)
            print("Failed to load libcublas.so.13")

    fake = FakeOnnxruntimeGpu()
    preload_cuda_libraries(fake)
    preload_cuda_libraries(fake)  # once per process
    out, err = capsys.readouterr()
    assert out == "" and "libcublas" in err and calls == [1]
