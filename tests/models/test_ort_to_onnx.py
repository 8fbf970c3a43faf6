"""The .ort -> ONNX converter: same graph, same numbers, on real models and real speech."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from models.ort_to_onnx import OrtFormatError, load_ort, ort_to_onnx
from tests.models.conftest import MOONSHINE, shipped_dir

CLIP = "librispeech-test-clean-kw/1089-134691-0000.flac"  # 2.1 s


def session(model, optimize: bool = False):
    """A 1-thread CPU session of a path or a ModelProto; graph optimisations off by default,
    so both files are compared exactly as stored."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def run_decoder_steps(sess, hidden: np.ndarray) -> list[list[np.ndarray]]:
    """Outputs of step 0 (no cache: the `else` branch) and step 1 (cache: `then`)."""
    inputs = {i.name: i for i in sess.get_inputs()}
    shape = inputs["past_key_values.0.decoder.key"].shape
    past = {n: np.zeros((1, shape[1], 0, shape[3]), np.float32)
            for n in inputs if n.startswith("past_key_values.")}
    feed = {"input_ids": np.array([[1]], np.int64), "encoder_hidden_states": hidden,
            "use_cache_branch": np.array([False]), **past}
    if "encoder_attention_mask" in inputs:
        feed["encoder_attention_mask"] = np.ones((1, hidden.shape[1] * 384), np.int64)
    names = [o.name for o in sess.get_outputs()]
    first = sess.run(None, feed)
    out = dict(zip(names, first, strict=True))
    feed["use_cache_branch"] = np.array([True])
    feed["input_ids"] = out["logits"][:, -1:].argmax(-1)
    for n in past:
        feed[n] = out[n.replace("past_key_values", "present")]
    return [first, sess.run(None, feed)]


@pytest.mark.parametrize("model_id", MOONSHINE)
def test_converted_model_computes_exactly_what_the_ort_file_computes(model_id, read):
    folder = shipped_dir(model_id)
    audio = read(CLIP)
    enc_ort, dec_ort = folder / "encoder_model.ort", folder / "decoder_model_merged.ort"
    enc_onnx, dec_onnx = load_ort(enc_ort), load_ort(dec_ort)
    onnx.checker.check_model(enc_onnx)
    onnx.checker.check_model(dec_onnx)

    feed = {"input_values": audio[None]}
    if any(i.name == "attention_mask" for i in enc_onnx.graph.input):
        feed["attention_mask"] = np.ones((1, len(audio)), np.int64)
    (hidden,) = session(enc_ort).run(None, feed)
    (hidden2,) = session(enc_onnx).run(None, feed)
    assert hidden.shape[1] > 40 and np.array_equal(hidden, hidden2)

    expected = run_decoder_steps(session(dec_ort), hidden)
    got = run_decoder_steps(session(dec_onnx), hidden)
    for step_expected, step_got in zip(expected, got, strict=True):
        assert len(step_expected) == len(step_got)
        for a, b in zip(step_expected, step_got, strict=True):
            assert a.shape == b.shape and np.array_equal(a, b)


def test_graph_structure_is_kept():
    folder = shipped_dir("moonshine-tiny-en")
    model = load_ort(folder / "decoder_model_merged.ort")
    assert [i.name for i in model.graph.input][:3] == [
        "encoder_attention_mask", "input_ids", "encoder_hidden_states"]
    assert len(model.graph.input) == 28 and model.graph.output[0].name == "logits"
    (if_node,) = [n for n in model.graph.node if n.op_type == "If"]
    branches = {a.name: a.g for a in if_node.attribute}
    assert set(branches) == {"then_branch", "else_branch"}
    assert all(len(g.node) > 800 for g in branches.values())
    ops = {(n.domain, n.op_type) for g in branches.values() for n in g.node}
    assert ("com.microsoft", "DynamicQuantizeMatMul") in ops
    assert {o.domain for o in model.opset_import} == {"", "com.microsoft"}
    logits = model.graph.output[0].type.tensor_type
    assert logits.elem_type == onnx.TensorProto.FLOAT and len(logits.shape.dim) == 3


def test_conversion_is_deterministic():
    data = (shipped_dir("moonshine-tiny-en") / "encoder_model.ort").read_bytes()
    assert ort_to_onnx(data).SerializeToString() == ort_to_onnx(data).SerializeToString()


def test_not_an_ort_file_is_refused(tmp_path):
    with pytest.raises(OrtFormatError, match="not an ORT-format model"):
        ort_to_onnx(b"hello, this is not a flatbuffer at all")
    silero = (shipped_dir("silero-vad") / "silero_vad.onnx").read_bytes()
    with pytest.raises(OrtFormatError, match="not an ORT-format model"):
        ort_to_onnx(silero)
    data = (shipped_dir("moonshine-tiny-en") / "encoder_model.ort").read_bytes()
    with pytest.raises(OrtFormatError):
        ort_to_onnx(data[:4096])  # truncated
