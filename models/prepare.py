"""Recipes that turn a model's shipped files into the forms each device runs.

A recipe is a string of steps joined by `+`, applied in order to one source file:

- `float`: convert the `.ort` file to ONNX (`models.ort_to_onnx`) and replace every
  com.microsoft op by standard ONNX ops. `DynamicQuantizeMatMul` and
  `DynamicQuantizeLinear` + `MatMulIntegerToFloat` become `MatMul` on dequantised weights
  (+ bias `Add`): activations stay float, so no scale is ever computed over a batch and a
  row's numbers cannot depend on its neighbours. `FusedMatMul` -> Transpose/MatMul/Mul,
  `QuickGelu` -> x*Sigmoid(alpha x), `Gelu` -> the erf formula, `FusedConv` -> Conv +
  activation, `SkipLayerNormalization` -> Add + LayerNormalization. Weights keep the
  integers they ship with: each quantised weight is stored as its int8/uint8 initializer
  with a `Cast -> Sub(zero point) -> Mul(scale)` chain (per tensor or per column, as
  shipped) that ONNX Runtime constant-folds into a float initializer when the session is
  created, so the file stays small and the compute is float. Existing
  `Cast -> Mul -> Add` dequantisation chains (Moonshine base) are left as they are: in an
  ONNX file they are folded the same way (in the `.ort` file they ran on every call).
  To keep sessions small, a `Gather` from a dequantised weight gathers int8 rows and
  dequantises those (bit-identical: the chain is elementwise), and nodes both `If`
  branches compute alike from constants move in front of the `If` (one folded copy).
- `fp32`: fold every such dequantisation chain here instead, storing plain float32
  initializers (bigger files; the values are bit-identical to what the session folds).
- `mask`: give a merged decoder without `encoder_attention_mask` one, with tiny's
  contract: int64 [batch, samples], 1 = real audio, downsampled inside the graph by a
  Slice with step 384 to encoder frames. It becomes an additive bias (0 for real frames,
  -3.4e38 for padding) on the scores before every cross-attention Softmax in both `If`
  branches, so padded frames get exactly zero weight. Cross- vs self-attention is told
  apart by tracing the K side of the scores MatMul back to `encoder_hidden_states` or
  `past_key_values.N.encoder.*`.

Contract: `prepare_bytes(data, recipe)` is a pure, deterministic function of the source
bytes and the recipe (no timestamps, no randomness, stable names and node order), so the
catalog can list each prepared file's size and sha256. Raises PrepareError for a recipe
it does not know or a graph it cannot rewrite (it never writes a partial file).
Thread-safe; needs `onnx` and numpy, never an onnxruntime session.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import GraphProto, ModelProto, NodeProto, TensorProto, helper, numpy_helper

from models.ort_to_onnx import OrtFormatError, ort_to_onnx

PREFIX = "earshot/"  # every name this module adds starts with it
MASK_INPUT = "encoder_attention_mask"
MASK_STRIDE = 384  # samples per encoder frame (Moonshine's conv stem: 64 * 3 * 2)
FLOAT_MIN = float(np.finfo(np.float32).min)
CROSS_SOURCE = re.compile(r"^(encoder_hidden_states|past_key_values\.\d+\.encoder\.(key|value))$")
INT_TYPES = (TensorProto.INT8, TensorProto.UINT8)


class PrepareError(ValueError):
    """A recipe cannot be applied to this model."""


# ---------------------------------------------------------------- graph scaffolding


@dataclass
class Scope:
    """One graph plus the graphs around it (innermost last), for outer-scope lookups."""

    graph: GraphProto
    parent: Scope | None = None

    def initializer(self, name: str) -> tuple[Scope, TensorProto] | None:
        scope: Scope | None = self
        while scope is not None:
            for t in scope.graph.initializer:
                if t.name == name:
                    return scope, t
            scope = scope.parent
        return None


class Namer:
    """Deterministic fresh names: PREFIX + hint + running number."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, hint: str) -> str:
        self.count += 1
        return f"{PREFIX}{hint}_{self.count}"


def subgraphs(node: NodeProto) -> Iterator[GraphProto]:
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            yield a.g
        yield from a.graphs


def walk(scope: Scope) -> Iterator[Scope]:
    """`scope` and every subgraph scope below it, depth first, in node order."""
    yield scope
    for node in scope.graph.node:
        for g in subgraphs(node):
            yield from walk(Scope(g, scope))


def bottom_up(root: Scope) -> list[Scope]:
    """Every scope, each after all of its subgraphs.

    Rewrites must go in this order: replacing a graph's node list copies its nodes, so a
    subgraph edited after its parent was rebuilt would be edited in a detached copy.
    """
    return list(walk(root))[::-1]


def set_nodes(graph: GraphProto, nodes: list[NodeProto]) -> None:
    """Replace `graph`'s nodes by `nodes` (which may include its current ones)."""
    del graph.node[:]
    graph.node.extend(nodes)


def used_names(graph: GraphProto, found: set[str] | None = None) -> set[str]:
    """Every value name read by a node of `graph` or its subgraphs, or output by a graph."""
    found = set() if found is None else found
    found.update(o.name for o in graph.output)
    for node in graph.node:
        found.update(node.input)
        for g in subgraphs(node):
            used_names(g, found)
    return found


def add_const(scope: Scope, namer: Namer, value: np.ndarray, hint: str) -> str:
    name = namer(hint)
    scope.graph.initializer.append(numpy_helper.from_array(value, name))
    return name


def opset(model: ModelProto, domain: str = "") -> int:
    for o in model.opset_import:
        if o.domain in (domain, "ai.onnx" if domain == "" else domain):
            return o.version
    return 0


def rank_of(scope: Scope, name: str) -> int | None:
    scope_: Scope | None = scope
    while scope_ is not None:
        g = scope_.graph
        for v in [*g.value_info, *g.input, *g.output]:
            if v.name == name and v.type.tensor_type.HasField("shape"):
                return len(v.type.tensor_type.shape.dim)
        for t in g.initializer:
            if t.name == name:
                return len(t.dims)
        scope_ = scope_.parent
    return None


# ---------------------------------------------------------------- step: float


class _Float:
    """Replace com.microsoft ops by standard ops (see the module docstring)."""

    def __init__(self, model: ModelProto, namer: Namer) -> None:
        self.model = model
        self.namer = namer
        self.weights: dict[tuple[str, str, str], str] = {}  # (B, scale, zp) -> float weight
        self.head: dict[int, tuple[GraphProto, list[NodeProto]]] = {}  # dequant nodes to add
        self.dql: dict[str, NodeProto] = {}  # DynamicQuantizeLinear output -> node
        root = Scope(model.graph)
        for scope in walk(root):
            for node in scope.graph.node:
                if node.op_type == "DynamicQuantizeLinear":
                    for out in node.output:
                        self.dql[out] = node
        self.root = root

    def run(self) -> None:
        for scope in bottom_up(self.root):  # uses of a weight are in its graph or below
            new_nodes: list[NodeProto] = []
            for node in scope.graph.node:
                rewrite = None
                if node.domain == "com.microsoft":
                    rewrite = getattr(self, f"_{node.op_type}", None)
                if node.domain == "com.microsoft" and rewrite is None:
                    raise PrepareError(f"no standard-op replacement for {node.op_type} "
                                       f"({node.name})")
                new_nodes.extend(rewrite(scope, node) if rewrite else [node])
            # dequantisation chains read only initializers: they go first
            head = self.head.pop(id(scope.graph), (None, []))[1]
            set_nodes(scope.graph, [*head, *new_nodes])
        self._drop_unused_quantizers()
        gather_before_dequantising(self.model, self.namer)
        hoist_constant_branch_nodes(self.model)

    # weights -------------------------------------------------------------
    def _float_weight(self, scope: Scope, b: str, scale: str, zp: str) -> str:
        """Name of a float version of quantised weight `b` (a Cast/Sub/Mul chain)."""
        key = (b, scale, zp)
        if key in self.weights:
            return self.weights[key]
        found = scope.initializer(b)
        if found is None or found[1].data_type not in INT_TYPES:
            raise PrepareError(f"weight '{b}' is not an int8/uint8 initializer")
        owner, _ = found
        for extra in (scale, zp):
            if extra and owner.initializer(extra) is None:
                raise PrepareError(f"'{extra}' is not an initializer beside '{b}'")
        nodes = []
        cast = self.namer("w_float")
        nodes.append(helper.make_node("Cast", [b], [cast], to=TensorProto.FLOAT,
                                      name=self.namer("cast")))
        value = cast
        if zp:
            zp_value = numpy_helper.to_array(owner.initializer(zp)[1]).astype(np.float32)
            if np.any(zp_value != 0):
                zp_name = add_const(owner, self.namer, zp_value, "zero_point")
                value, sub_in = self.namer("w_centred"), value
                nodes.append(helper.make_node("Sub", [sub_in, zp_name], [value],
                                              name=self.namer("sub")))
        out = self.namer("w_dequant")
        nodes.append(helper.make_node("Mul", [value, scale], [out], name=self.namer("mul")))
        self.head.setdefault(id(owner.graph), (owner.graph, []))[1].extend(nodes)
        self.weights[key] = out
        return out

    def _matmul(self, a: str, w: str, bias: str, out: str, name: str) -> list[NodeProto]:
        if not bias:
            return [helper.make_node("MatMul", [a, w], [out], name=name)]
        tmp = self.namer("matmul")
        return [helper.make_node("MatMul", [a, w], [tmp], name=name),
                helper.make_node("Add", [tmp, bias], [out], name=self.namer("bias"))]

    # replacements ----------------------------------------------------------
    def _DynamicQuantizeMatMul(self, scope: Scope, node: NodeProto) -> list[NodeProto]:
        a, b, scale, zp, bias = [*node.input, "", "", ""][:5]
        w = self._float_weight(scope, b, scale, zp)
        return self._matmul(a, w, bias, node.output[0], node.name)

    def _MatMulIntegerToFloat(self, scope: Scope, node: NodeProto) -> list[NodeProto]:
        a, b, a_scale, b_scale, a_zp, b_zp, bias = [*node.input, "", "", ""][:7]
        src = self.dql.get(a)
        if src is None or src.output[1] != a_scale or (a_zp and src.output[2] != a_zp):
            raise PrepareError(f"{node.name}: A is not the output of a DynamicQuantizeLinear")
        w = self._float_weight(scope, b, b_scale, b_zp)
        return self._matmul(src.input[0], w, bias, node.output[0], node.name)

    def _FusedMatMul(self, scope: Scope, node: NodeProto) -> list[NodeProto]:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("transBatchA", 0) or attrs.get("transBatchB", 0):
            raise PrepareError(f"{node.name}: FusedMatMul with transBatch is not supported")
        nodes, ins = [], list(node.input[:2])
        for k, flag in enumerate(("transA", "transB")):
            if attrs.get(flag, 0):
                rank = rank_of(scope, ins[k])
                if rank is None or rank < 2:
                    raise PrepareError(f"{node.name}: unknown rank of '{ins[k]}'")
                perm = [*range(rank - 2), rank - 1, rank - 2]
                t = self.namer("transposed")
                nodes.append(helper.make_node("Transpose", [ins[k]], [t], perm=perm,
                                              name=self.namer("transpose")))
                ins[k] = t
        alpha = float(attrs.get("alpha", 1.0))
        if alpha == 1.0:
            return [*nodes, helper.make_node("MatMul", ins, [node.output[0]], name=node.name)]
        tmp = self.namer("scores")
        c = add_const(scope, self.namer, np.array(alpha, np.float32), "alpha")
        return [*nodes, helper.make_node("MatMul", ins, [tmp], name=node.name),
                helper.make_node("Mul", [tmp, c], [node.output[0]], name=self.namer("scale"))]

    def _QuickGelu(self, scope: Scope, node: NodeProto) -> list[NodeProto]:
        alpha = next((helper.get_attribute_value(a) for a in node.attribute
                      if a.name == "alpha"), 1.702)
        x, nodes = node.input[0], []
        gate_in = x
        if alpha != 1.0:
            c = add_const(scope, self.namer, np.array(alpha, np.float32), "alpha")
            gate_in = self.namer("ax")
            nodes.append(helper.make_node("Mul", [x, c], [gate_in], name=self.namer("mul")))
        gate = self.namer("gate")
        return [*nodes, helper.make_node("Sigmoid", [gate_in], [gate], name=self.namer("sig")),
                helper.make_node("Mul", [x, gate], [node.output[0]], name=node.name)]

    def _Gelu(self, scope: Scope, node: NodeProto) -> list[NodeProto]:
        # the pattern ORT's GeluFusion recognises: x * (erf(x / sqrt2) + 1) * 0.5
        x = node.input[0]
        sqrt2 = add_const(scope, self.namer, np.array(np.sqrt(2.0), np.float32), "sqrt2")
        one = add_const(scope, self.namer, np.array(1.0, np.float32), "one")
        half = add_const(scope, self.namer, np.array(0.5, np.float32), "half")
        d, e, p, m = (self.namer(h) for h in ("gelu_div", "gelu_erf", "gelu_add", "gelu_mul"))
        return [helper.make_node("Div", [x, sqrt2], [d], name=self.namer("div")),
                helper.make_node("Erf", [d], [e], name=self.namer("erf")),
                helper.make_node("Add", [e, one], [p], name=self.namer("add")),
                helper.make_node("Mul", [x, p], [m], name=self.namer("mul")),
                helper.make_node("Mul", [m, half], [node.output[0]], name=node.name)]

    def _FusedConv(self, scope: Scope, node: NodeProto) -> list[NodeProto]:
        attrs = {a.name: a for a in node.attribute}
        activation = helper.get_attribute_value(attrs["activation"]).decode()
        if len(node.input) > 3 and node.input[3]:
            raise PrepareError(f"{node.name}: FusedConv with a sum input is not supported")
        if activation not in ("Tanh", "Relu", "Sigmoid") or "activation_params" in attrs:
            raise PrepareError(f"{node.name}: FusedConv activation {activation} not supported")
        conv = helper.make_node("Conv", list(node.input[:3]), [self.namer("conv")],
                                name=self.namer("conv"))
        conv.attribute.extend(a for n, a in attrs.items()
                              if n not in ("activation", "activation_params"))
        return [conv, helper.make_node(activation, [conv.output[0]], [node.output[0]],
                                       name=node.name)]

    def _SkipLayerNormalization(self, scope: Scope, node: NodeProto) -> list[NodeProto]:
        if opset(self.model) < 17:
            raise PrepareError("SkipLayerNormalization needs opset 17 (LayerNormalization)")
        x, skip, gamma, beta, bias = [*node.input, "", ""][:5]
        outs = [*node.output, "", "", ""][:4]
        if outs[1] or outs[2]:
            raise PrepareError(f"{node.name}: mean/inv_std outputs are not supported")
        eps = next((helper.get_attribute_value(a) for a in node.attribute
                    if a.name == "epsilon"), 1e-12)
        total = outs[3] or self.namer("skip_sum")
        nodes = []
        if bias:
            partial = self.namer("skip_partial")
            nodes += [helper.make_node("Add", [x, skip], [partial], name=self.namer("add")),
                      helper.make_node("Add", [partial, bias], [total], name=self.namer("add"))]
        else:
            nodes.append(helper.make_node("Add", [x, skip], [total], name=self.namer("add")))
        ln_in = [total, gamma, beta] if beta else [total, gamma]
        nodes.append(helper.make_node("LayerNormalization", ln_in, [outs[0]], axis=-1,
                                      epsilon=eps, name=node.name))
        return nodes

    def _drop_unused_quantizers(self) -> None:
        while True:
            used = used_names(self.model.graph)
            removed = False
            for scope in bottom_up(self.root):
                keep = [n for n in scope.graph.node
                        if n.op_type != "DynamicQuantizeLinear" or any(o in used
                                                                       for o in n.output)]
                if len(keep) != len(scope.graph.node):
                    set_nodes(scope.graph, keep)
                    removed = True
            if not removed:
                return


def gather_before_dequantising(model: ModelProto, namer: Namer) -> int:
    """Let `Gather(dequant(W), ids)` gather int8 rows and dequantise only those.

    `dequant` is a `Cast(int8/uint8 W) -> [Sub(zp)] -> Mul(s) -> [Add(c)]` chain with
    scalar constants: elementwise, so the rows are bit-identical either way, and the float
    copy of W (base's 13.6 M-parameter embedding) is then only what other users need (the
    logits' transposed copy). Returns the Gathers rewritten.
    """
    root = Scope(model.graph)
    producers = {o: n for n in model.graph.node for o in n.output}
    rewritten = 0
    for scope in bottom_up(root):
        new_nodes: list[NodeProto] = []
        changed = False
        for node in scope.graph.node:
            chain = _dequant_chain(scope, producers, node.input[0]) if (
                node.op_type == "Gather" and node.input) else None
            if chain is None:
                new_nodes.append(node)
                continue
            source, ops = chain
            value = namer("gathered_q")
            gather = helper.make_node("Gather", [source, node.input[1]], [value],
                                      name=node.name)
            gather.attribute.extend(node.attribute)  # axis: scalar dequantisation commutes
            new_nodes.append(gather)
            for k, (op, const, attrs) in enumerate(ops):
                out = node.output[0] if k == len(ops) - 1 else namer("gathered_dq")
                new_nodes.append(helper.make_node(op, [value, *const], [out],
                                                  name=namer(op.lower()), **attrs))
                value = out
            changed = True
            rewritten += 1
        if changed:
            set_nodes(scope.graph, new_nodes)
    return rewritten


def _dequant_chain(scope: Scope, producers: dict[str, NodeProto],
                   name: str) -> tuple[str, list[tuple[str, list[str], dict]]] | None:
    """(int8 source initializer, [(op, [constant], attrs)...]) of a root-graph dequant
    chain ending in `name` with scalar constants, or None."""
    ops: list[tuple[str, list[str], dict]] = []
    while True:
        node = producers.get(name)
        if node is None:
            return None
        if node.op_type == "Cast":
            src = scope.initializer(node.input[0])
            if src is None or src[1].data_type not in INT_TYPES or not ops:
                return None
            ops.append(("Cast", [], {a.name: helper.get_attribute_value(a)
                                     for a in node.attribute}))
            return node.input[0], ops[::-1]
        if node.op_type not in ("Sub", "Mul", "Add") or len(node.input) != 2:
            return None
        const = scope.initializer(node.input[1])
        if const is None or int(np.prod(const[1].dims)) != 1:
            return None
        ops.append((node.op_type, [node.input[1]], {}))
        name = node.input[0]


def hoist_constant_branch_nodes(model: ModelProto) -> int:
    """Move nodes that every branch of an `If` computes alike from outer-scope constants
    (e.g. base's `Transpose` of the dequantised embedding for the logits) in front of the
    `If`, so ONNX Runtime folds one copy instead of one per branch. Returns nodes moved."""
    moved = 0
    for scope in bottom_up(Scope(model.graph)):
        graph = scope.graph
        constant = {t.name for s in _chain(scope) for t in s.graph.initializer}
        new_nodes: list[NodeProto] = []
        for node in graph.node:
            if all(i in constant for i in node.input if i) and node.op_type != "If":
                constant.update(node.output)
            branches = list(subgraphs(node)) if node.op_type == "If" else []
            if len(branches) == 2:
                outer = _produced(graph) | {t.name for s in _chain(scope)
                                            for t in s.graph.initializer}
                keys = []
                for g in branches:
                    inner = _produced(g)
                    keys.append({_node_key(n): n for n in g.node
                                 if n.input and all(i in constant for i in n.input if i)
                                 and not any(i in inner for i in n.input)
                                 and not any(o in outer for o in n.output)})
                common = [k for k in keys[0] if k in keys[1]]
                for key in common:
                    new_nodes.append(keys[0][key])
                    constant.update(keys[0][key].output)
                for g, found in zip(branches, keys, strict=True):
                    drop = {id(found[k]) for k in common}
                    if drop:
                        set_nodes(g, [n for n in list(g.node) if id(n) not in drop])
                moved += len(common)
            new_nodes.append(node)
        if moved:
            set_nodes(graph, new_nodes)
    return moved


def _chain(scope: Scope) -> Iterator[Scope]:
    s: Scope | None = scope
    while s is not None:
        yield s
        s = s.parent


def _produced(graph: GraphProto) -> set[str]:
    return {o for n in graph.node for o in n.output}


def _node_key(node: NodeProto) -> bytes:
    """The node without its name: equal keys compute the same values."""
    copy = NodeProto()
    copy.CopyFrom(node)
    copy.name = ""
    return copy.SerializeToString(deterministic=True)


# ---------------------------------------------------------------- step: fp32


def fold_dequantisation(model: ModelProto, namer: Namer) -> None:
    """Fold Cast(int8/uint8 init) -> [Sub(c)] -> Mul(c) -> [Add(c)] chains into fp32 inits.

    numpy computes exactly what ONNX Runtime's constant folding computes (the same float32
    operations in the same order), so outputs are bit-identical to the unfolded file.
    """
    root = Scope(model.graph)
    for scope in bottom_up(root):
        g = scope.graph
        consumers: dict[str, list[NodeProto]] = {}
        for s in walk(scope):
            for n in s.graph.node:  # the lists below keep these wrappers alive
                for i in n.input:
                    consumers.setdefault(i, []).append(n)
        drop: set[int] = set()
        nodes = list(g.node)  # keeps the wrappers alive, so id() is stable below
        here = {id(n) for n in nodes}
        for node in nodes:
            if node.op_type != "Cast" or id(node) in drop:
                continue
            src = scope.initializer(node.input[0])
            if src is None or src[1].data_type not in INT_TYPES:
                continue
            value = numpy_helper.to_array(src[1]).astype(np.float32)
            chain, name = [node], node.output[0]
            for op in ("Sub", "Mul", "Add"):
                users = consumers.get(name, [])
                if len(users) != 1 or users[0].op_type != op or id(users[0]) not in here:
                    if op == "Mul":
                        break
                    continue
                user = users[0]
                other = [i for i in user.input if i != name]
                const = scope.initializer(other[0]) if len(other) == 1 else None
                if const is None or const[1].data_type != TensorProto.FLOAT:
                    break
                c = numpy_helper.to_array(const[1])
                if op == "Sub":
                    value = value - c if user.input[0] == name else c - value
                elif op == "Mul":
                    value = value * c
                else:
                    value = value + c
                value = value.astype(np.float32)
                chain.append(user)
                name = user.output[0]
            if len(chain) < 2 or chain[-1].op_type == "Sub":
                continue  # a bare Cast or a half chain: leave it to the session
            g.initializer.append(numpy_helper.from_array(value, name))
            drop.update(id(n) for n in chain)
        set_nodes(g, [n for n in nodes if id(n) not in drop])
    prune_initializers(model)


def prune_initializers(model: ModelProto) -> None:
    """Remove initializers that nothing reads any more (in every graph)."""
    used = used_names(model.graph)
    for scope in walk(Scope(model.graph)):
        keep = [t for t in scope.graph.initializer if t.name in used]
        if len(keep) != len(scope.graph.initializer):
            del scope.graph.initializer[:]
            scope.graph.initializer.extend(keep)


# ---------------------------------------------------------------- step: mask


def _k_sources(scope: Scope, name: str) -> set[str]:
    """Graph-level names the K operand of a scores MatMul comes from.

    Walks up through the producers of `name` in this graph; a projection MatMul (one
    input an initializer or outer weight) ends the walk with its activation input's name
    when that is a graph input / outer value, Shape nodes end it (shape, not data).
    """
    producers = {o: n for n in scope.graph.node for o in n.output}
    found: set[str] = set()
    stack, seen = [name], set()
    while stack:
        value = stack.pop()
        if value in seen or not value:
            continue
        seen.add(value)
        node = producers.get(value)
        if node is None:
            found.add(value)
            continue
        if node.op_type == "Shape":
            continue
        if node.op_type == "MatMul":
            activation = node.input[0]
            if activation not in producers:
                found.add(activation)
            continue
        stack.extend(node.input)
    return found


def _scores_matmul(scope: Scope, softmax: NodeProto) -> NodeProto | None:
    """The MatMul computing the scores that `softmax` normalises (through Add/Mul/Div)."""
    producers = {o: n for n in scope.graph.node for o in n.output}
    value = softmax.input[0]
    for _ in range(4):
        node = producers.get(value)
        if node is None:
            return None
        if node.op_type == "MatMul":
            return node
        if node.op_type not in ("Add", "Mul", "Div", "Where", "Cast"):
            return None
        value = node.input[0]
    return None


def inject_encoder_mask(model: ModelProto, namer: Namer) -> int:
    """Add `encoder_attention_mask` to a merged decoder (see the module docstring).

    Returns the number of cross-attention Softmax nodes masked.
    """
    graph = model.graph
    if any(i.name == MASK_INPUT for i in graph.input):
        raise PrepareError(f"the decoder already has an input '{MASK_INPUT}'")
    if not any(i.name == "encoder_hidden_states" for i in graph.input):
        raise PrepareError("not a merged decoder: no input 'encoder_hidden_states'")
    if opset(model) < 13:
        raise PrepareError("mask injection needs opset 13 or later")
    root = Scope(graph)
    mask = helper.make_tensor_value_info(MASK_INPUT, TensorProto.INT64,
                                         ["batch_size", "encoder_sequence_length_samples"])
    inputs = [mask, *graph.input]
    del graph.input[:]
    graph.input.extend(inputs)

    def const(value, hint: str) -> str:
        return add_const(root, namer, np.array(value), hint)

    frames, maskf, keep, bias2, bias4 = (namer(h) for h in (
        "mask_frames", "mask_float", "mask_pad", "mask_bias", "mask_bias4"))
    head = [
        helper.make_node("Slice", [MASK_INPUT, const([0], "zero"),
                                   const([np.iinfo(np.int64).max], "end"),
                                   const([1], "axis"), const([MASK_STRIDE], "stride")],
                         [frames], name=namer("mask_downsample")),
        helper.make_node("Cast", [frames], [maskf], to=TensorProto.FLOAT,
                         name=namer("mask_cast")),
        helper.make_node("Sub", [const(np.float32(1.0), "one"), maskf], [keep],
                         name=namer("mask_invert")),
        helper.make_node("Mul", [keep, const(np.float32(FLOAT_MIN), "float_min")], [bias2],
                         name=namer("mask_scale")),
        helper.make_node("Unsqueeze", [bias2, const([1, 2], "axes")], [bias4],
                         name=namer("mask_unsqueeze")),
    ]
    masked = 0
    for scope in bottom_up(root):
        if scope is root:
            set_nodes(graph, [*head, *graph.node])
            continue
        new_nodes: list[NodeProto] = []
        for node in scope.graph.node:
            if node.op_type == "Softmax":
                mm = _scores_matmul(scope, node)
                if mm is not None and any(CROSS_SOURCE.match(s)
                                          for s in _k_sources(scope, mm.input[1])):
                    new_nodes.extend(_mask_scores(scope, namer, node, bias4))
                    masked += 1
            new_nodes.append(node)
        set_nodes(scope.graph, new_nodes)
    if masked == 0:
        raise PrepareError("found no cross-attention Softmax to mask")
    return masked


def _mask_scores(scope: Scope, namer: Namer, softmax: NodeProto, bias4: str) -> list[NodeProto]:
    """Nodes adding the frame-trimmed mask bias to `softmax`'s input (rewired in place)."""
    scores = softmax.input[0]
    shape, length, bias, masked = (namer(h) for h in (
        "scores_shape", "scores_frames", "frames_bias", "masked_scores"))
    c = lambda v, h: add_const(scope, namer, np.array(v, np.int64), h)  # noqa: E731
    nodes = [
        helper.make_node("Shape", [scores], [shape], name=namer("shape")),
        helper.make_node("Slice", [shape, c([3], "dim"), c([4], "dim_end"), c([0], "axis")],
                         [length], name=namer("frames")),
        helper.make_node("Slice", [bias4, c([0], "zero"), length, c([3], "axis")], [bias],
                         name=namer("trim_bias")),
        helper.make_node("Add", [scores, bias], [masked], name=namer("mask_add")),
    ]
    softmax.input[0] = masked
    return nodes


# ---------------------------------------------------------------- recipes


STEPS: dict[str, Callable[[ModelProto, Namer], object]] = {
    "float": lambda model, namer: _Float(model, namer).run(),
    "fp32": fold_dequantisation,
    "mask": inject_encoder_mask,
}


def parse_recipe(recipe: str) -> list[str]:
    """Steps of a recipe string; PrepareError names the known steps."""
    steps = recipe.split("+") if recipe else []
    if not steps or steps[0] != "float" or any(s not in STEPS for s in steps):
        raise PrepareError(f"unknown recipe '{recipe}': steps are {', '.join(STEPS)} joined "
                           "by '+', starting with 'float'")
    return steps


def prepare_model(data: bytes, recipe: str) -> ModelProto:
    """The prepared ModelProto of `.ort` bytes `data` under `recipe`."""
    steps = parse_recipe(recipe)
    try:
        model = ort_to_onnx(data)
    except OrtFormatError as exc:
        raise PrepareError(str(exc)) from exc
    namer = Namer()
    for step in steps:
        STEPS[step](model, namer)
    for scope in walk(Scope(model.graph)):  # shapes ORT recorded before the rewrite
        del scope.graph.value_info[:]
    prune_initializers(model)
    domains = {""}
    for scope in walk(Scope(model.graph)):
        domains.update(n.domain for n in scope.graph.node)
    keep = [o for o in model.opset_import if o.domain in domains or o.domain == "ai.onnx"]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    model.producer_name, model.producer_version = "earshot.models.prepare", recipe
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise PrepareError(f"the prepared graph is not valid ONNX: {exc}") from exc
    return model


def prepare_bytes(data: bytes, recipe: str) -> bytes:
    """Serialised prepared model (deterministic; see the module docstring)."""
    return prepare_model(data, recipe).SerializeToString(deterministic=True)


def prepare_file(source: Path, recipe: str, target: Path) -> None:
    """Write the prepared form of `source` to `target` atomically (a temp file of this
    process, then rename), so processes preparing the same file at once cannot mix."""
    data = prepare_bytes(Path(source).read_bytes(), recipe)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    """`python -m models.prepare SOURCE RECIPE OUT`: prepare one file, print its catalog
    line (for maintainers adding a prepared file to catalog.toml)."""
    import argparse
    import hashlib

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("source", type=Path)
    ap.add_argument("recipe")
    ap.add_argument("out", type=Path)
    args = ap.parse_args(argv)
    prepare_file(args.source, args.recipe, args.out)
    data = args.out.read_bytes()
    print(f'{{ name = "{args.out.name}", source = "{args.source.name}", '
          f'recipe = "{args.recipe}", size = {len(data)}, '
          f'sha256 = "{hashlib.sha256(data).hexdigest()}" }},')
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
