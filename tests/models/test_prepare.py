"""Recipes: deterministic files (the catalog's checksums), standard ops only, the injected
encoder mask, and batch invariance of the float forms on real speech."""

import hashlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from bench.model_forms import FormRunner, token_budget
from models.catalog import load_catalog
from models.prepare import MASK_INPUT, PrepareError, parse_recipe, prepare_bytes, prepare_model
from tests.models.conftest import MOONSHINE, form_paths, shipped_dir

SHORT = "pocketsphinx-testdata/001.wav"  # 1.1 s
MIDDLE = "pocketsphinx-testdata/005.wav"  # 3.5 s
LONG = "sherpa-test-wavs/0.wav"  # 6.6 s


def all_nodes(graph):
    for node in graph.node:
        yield node
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from all_nodes(a.g)


@pytest.mark.parametrize("model_id", MOONSHINE)
def test_prepared_files_match_the_catalog(model_id, prepared_dir):
    """Recipes are deterministic: what is made here is byte for byte what the catalog lists."""
    shipped_dir(model_id)
    spec = load_catalog().get(model_id)
    assert spec.prepared
    for f in spec.prepared:
        data = (prepared_dir / model_id / f.name).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (f.size, f.sha256), f.name


@pytest.mark.parametrize("model_id", MOONSHINE)
def test_float_forms_use_standard_onnx_ops_only(model_id, prepared_dir):
    shipped_dir(model_id)
    for f in load_catalog().get(model_id).prepared:
        model = onnx.load(prepared_dir / model_id / f.name)
        assert {n.domain for n in all_nodes(model.graph)} == {""}, f.name
        ops = {n.op_type for n in all_nodes(model.graph)}
        assert not ops & {"DynamicQuantizeLinear", "MatMulInteger", "ConvInteger"}
        assert [o.domain for o in model.opset_import] == [""]


def test_weights_stored_as_int8_or_fp32_compute_the_same():
    """The int8-on-disk chain that ONNX Runtime folds at session creation gives the same
    bits as fp32 initializers folded here (tiny's encoder: the cheap one to check)."""
    data = (shipped_dir("moonshine-tiny-en") / "encoder_model.ort").read_bytes()
    small, big = prepare_model(data, "float"), prepare_model(data, "float+fp32")
    assert big.ByteSize() > 2 * small.ByteSize()
    assert not any(n.op_type == "Cast" and n.input[0].endswith("_quantized")
                   for n in big.graph.node)
    audio = np.random.default_rng(0).standard_normal(40_000).astype(np.float32) * 0.1
    feed = {"input_values": audio[None], "attention_mask": np.ones((1, 40_000), np.int64)}
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    outs = [ort.InferenceSession(m.SerializeToString(), opts,
                                 providers=["CPUExecutionProvider"]).run(None, feed)[0]
            for m in (small, big)]
    assert np.array_equal(outs[0], outs[1])


def test_mask_is_added_before_each_cross_attention_softmax(prepared_dir):
    shipped_dir("moonshine-base-en")
    model = onnx.load(prepared_dir / "moonshine-base-en" / "decoder_model_merged.float.onnx")
    mask = model.graph.input[0]
    assert mask.name == MASK_INPUT and mask.type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert len(model.graph.input) == 36
    (if_node,) = [n for n in model.graph.node if n.op_type == "If"]
    for branch in if_node.attribute:
        producers = {o: n for n in branch.g.node for o in n.output}
        softmaxes = [n for n in branch.g.node if n.op_type == "Softmax"]
        masked = [s for s in softmaxes if producers[s.input[0]].name.startswith("earshot/mask_add")]
        assert len(softmaxes) == 16 and len(masked) == 8, branch.name  # 8 layers
        for s in masked:  # the scores' K side is the encoder's, not the decoder's
            scores = producers[producers[s.input[0]].input[0]]
            assert scores.op_type == "MatMul" and "encoder_attn" in scores.name


def test_recipe_errors_are_clear():
    data = (shipped_dir("moonshine-tiny-en") / "decoder_model_merged.ort").read_bytes()
    with pytest.raises(PrepareError, match="unknown recipe 'fp16'"):
        parse_recipe("fp16")
    with pytest.raises(PrepareError, match="starting with 'float'"):
        parse_recipe("mask")
    with pytest.raises(PrepareError, match="already has an input 'encoder_attention_mask'"):
        prepare_bytes(data, "float+mask")
    with pytest.raises(PrepareError, match="not an ORT-format model"):
        prepare_bytes(b"not a model", "float")


def decode_alone_and_batched(runner: FormRunner, read, mask_all: bool = False):
    clips = {name: read(name) for name in (SHORT, MIDDLE, LONG)}
    hidden = {name: runner.encode(c) for name, c in clips.items()}
    budgets = {name: token_budget(len(c)) for name, c in clips.items()}
    alone = runner.decode([hidden[MIDDLE]], [budgets[MIDDLE]], keep_logits=True)
    order = (LONG, MIDDLE, SHORT)  # MIDDLE padded to LONG's length, beside a shorter one
    if mask_all:  # what a decoder without a mask sees: padding counts as audio
        hidden = {n: np.pad(h, ((0, hidden[LONG].shape[0] - h.shape[0]), (0, 0)))
                  for n, h in hidden.items()}
    batched = runner.decode([hidden[n] for n in order], [budgets[n] for n in order],
                            keep_logits=True)
    return (alone[0][0], alone[1][0]), (batched[0][1], batched[1][1])


@pytest.mark.parametrize("model_id", MOONSHINE)
def test_float_form_is_batch_invariant(model_id, prepared_dir, read):
    """A row decodes to bit-identical logits alone and in a padded batch of 3."""
    paths = form_paths(prepared_dir, model_id, "float")
    runner = FormRunner(paths["encoder"], paths["decoder"], threads=1)
    (tokens, logits), (tokens_b, logits_b) = decode_alone_and_batched(runner, read)
    assert len(tokens) >= 8 and tokens == tokens_b
    assert len(logits) == len(logits_b)
    assert all(np.array_equal(a, b) for a, b in zip(logits, logits_b, strict=True))
    if model_id == "moonshine-base-en":
        # the injected mask does the work: with padding shown as audio the row changes
        _, (_, logits_unmasked) = decode_alone_and_batched(runner, read, mask_all=True)
        assert not np.array_equal(logits[0], logits_unmasked[0])


def test_base_float_form_reads_like_the_shipped_files(prepared_dir, read):
    """Same tokens one by one as the files as shipped (weights folded, mask all ones)."""
    shipped = FormRunner(*[form_paths(prepared_dir, "moonshine-base-en", "int8")[r]
                           for r in ("encoder", "decoder")])
    prepared = FormRunner(*[form_paths(prepared_dir, "moonshine-base-en", "float")[r]
                            for r in ("encoder", "decoder")])
    audio = read(MIDDLE)
    budget = [token_budget(len(audio))]
    expected = shipped.decode([shipped.encode(audio)], budget)[0]
    assert prepared.decode([prepared.encode(audio)], budget)[0] == expected
