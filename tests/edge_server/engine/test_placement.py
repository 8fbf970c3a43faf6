"""Where nodes really run: profile parsing and classification, the truth on CPU, and the
refusal of CPU-only int8 graphs on CUDA (before any session is created)."""

import json

import pytest

from edge_server.engine import EngineError, create_engine
from edge_server.engine.placement import (
    CPU,
    CUDA,
    Placement,
    cpu_only_ops,
    graph_op_types,
)
from tests.conftest import SHIPPED_MODELS
from tests.edge_server.engine.conftest import int8_form

TINY = SHIPPED_MODELS / "moonshine-tiny-en"


def node(name: str, op: str, provider: str) -> dict:
    return {"cat": "Node", "name": f"{name}_kernel_time", "ph": "X", "dur": 3,
            "args": {"op_name": op, "provider": provider}}


def write_profile(tmp_path, events) -> Placement:
    path = tmp_path / "profile.json"
    session = {"cat": "Session", "name": "model_run", "args": {}}
    path.write_text(json.dumps([session, *events]))
    return Placement.from_profile(path)


def test_all_on_cuda_with_shape_ops_on_cpu_counts_as_cuda(tmp_path):
    events = [node(f"mm{i}", "MatMul", CUDA) for i in range(30)]
    events += [node("ln", "LayerNormalization", CUDA), node("sm", "Softmax", CUDA),
               node("shape", "Shape", CPU), node("g", "Gather", CPU), node("add", "Add", CPU)]
    events += [node("mm0", "MatMul", CUDA)]  # the same node in a second run: counted once
    p = write_profile(tmp_path, events)
    assert p.total == 35
    assert p.runs_on(CUDA) and p.main_provider() == CUDA
    assert p.summary() == (f"all 32 compute nodes on {CUDA} (3 shape nodes on the CPU, "
                           "as usual)")


def test_int8_matmuls_falling_back_are_named(tmp_path):
    events = [node(f"q{i}", "MatMulIntegerToFloat", CPU) for i in range(30)]
    events += [node(f"d{i}", "DynamicQuantizeLinear", CPU) for i in range(7)]
    events += [node(f"mm{i}", "MatMul", CUDA) for i in range(5)] + [node("s", "Shape", CPU)]
    p = write_profile(tmp_path, events)
    assert not p.runs_on(CUDA)
    assert p.main_provider() == CPU
    assert p.summary() == ("37 compute nodes fell back to CPU: MatMulIntegerToFloat x 30, "
                           f"DynamicQuantizeLinear x 7 (5 of 43 nodes on {CUDA})")


def test_single_provider_and_empty(tmp_path):
    p = write_profile(tmp_path, [node("a", "MatMul", CPU), node("b", "Reshape", CPU)])
    assert p.summary() == f"all 2 nodes on {CPU}" and p.main_provider() == CPU
    empty = Placement({}, "none")
    assert empty.main_provider() == "unknown" and "unknown" in empty.summary()


def test_engine_on_cpu_reports_cpu_from_its_own_profile(engine):
    p = engine.placement
    assert p.source == "profile"
    assert p.providers() == {CPU} and p.total > 1000  # every node of both graphs, both branches
    assert p.summary() == f"all {p.total} nodes on {CPU}"
    assert engine.provider == CPU and engine.device == "cpu"
    assert isinstance(engine.form, str) and engine.form


def test_op_types_of_ort_and_onnx_files():
    ops = graph_op_types(TINY / "decoder_model_merged.ort")
    assert ops["If"] == 1 and ops["MatMulIntegerToFloat"] > 0  # subgraphs included
    silero = graph_op_types(SHIPPED_MODELS / "silero-vad" / "silero_vad.onnx")
    assert silero["LSTM"] >= 1 and not cpu_only_ops([SHIPPED_MODELS / "silero-vad" /
                                                     "silero_vad.onnx"])


def test_int8_form_on_cuda_is_refused_with_the_fix():
    with pytest.raises(EngineError) as err:
        create_engine("moonshine-tiny-en", device="cuda", form=int8_form("moonshine-tiny-en"))
    msg = str(err.value)
    assert "cannot run on CUDA" in msg and "MatMulIntegerToFloat x" in msg
    assert "DynamicQuantizeMatMul x" in msg
    assert msg.endswith("Use the float form: earshot models fetch moonshine-tiny-en")


def test_float_forms_have_no_cpu_only_ops():
    from edge_server.engine.registry import resolve_form

    try:
        form = resolve_form("moonshine-tiny-en", "float", "cuda")
    except Exception as exc:  # the session start prepares it: missing is a failure
        pytest.fail(f"no float form: {exc}")
    graphs = [p for role, p in form.paths.items() if role != "tokenizer"]
    assert not cpu_only_ops(graphs)
    assert graph_op_types(graphs[1])["MatMul"] > 0
