"""Convert an ONNX Runtime ORT-format model (`.ort` flatbuffer) back into an ONNX ModelProto.

The catalog's Moonshine models ship only as `.ort` files. Reading them back into ONNX lets
`models.prepare` rewrite their graphs (replace quantised contrib ops, inject a mask).

Contract: `ort_to_onnx(data)` returns a ModelProto whose graphs hold the same nodes (op
type, domain, name, attributes including subgraphs), the same initializers (dtype, shape,
raw bytes), the same graph inputs/outputs with their element types and shapes (and, as
`value_info`, the types and shapes ORT recorded for intermediate values), the same
opset versions for the domains the nodes use, and the same IR version. Nodes are emitted
in a stable topological order (by the `.ort` node index where the order is free), so the
same input bytes always give the same serialised output. Loaded into onnxruntime with the
same session options, the result computes the same outputs as the `.ort` file.

Limits (raise OrtFormatError): sparse initializers, initializers stored outside the
flatbuffer, `Fused` nodes (models saved after EP-specific fusion), non-tensor graph
inputs. Pure function; thread-safe; imports `onnx` and onnxruntime's flatbuffer reader
(`onnxruntime.tools.ort_format_model`), never an InferenceSession.
"""

from __future__ import annotations

import heapq
from pathlib import Path

import onnx
from onnx import AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto


class OrtFormatError(ValueError):
    """The bytes are not an ORT-format model this converter can represent as ONNX."""


def _fbs():
    try:
        from onnxruntime.tools.ort_format_model.ort_flatbuffers_py import fbs
    except ImportError as exc:  # onnxruntime missing or built without its tools
        raise OrtFormatError(
            "reading .ort files needs onnxruntime's tools (pip install 'earshot[cpu]')"
        ) from exc
    return fbs


def _s(value: bytes | None) -> str:
    return value.decode("utf-8") if value else ""


def _tensor(t) -> TensorProto:
    """One flatbuffer Tensor -> TensorProto (raw bytes kept as they are)."""
    out = TensorProto()
    out.name = _s(t.Name())
    if t.DocString():
        out.doc_string = _s(t.DocString())
    out.dims.extend(int(d) for d in (t.DimsAsNumpy() if t.DimsLength() else []))
    out.data_type = t.DataType()
    if t.ExternalDataOffset() >= 0:
        raise OrtFormatError(f"initializer '{out.name}' is stored outside the .ort file")
    if out.data_type == TensorProto.STRING:
        out.string_data.extend(t.StringData(i) for i in range(t.StringDataLength()))
    else:
        out.raw_data = t.RawDataAsNumpy().tobytes() if t.RawDataLength() else b""
    return out


def _attribute(a, fbs) -> AttributeProto:
    kind = fbs.AttributeType.AttributeType
    out = AttributeProto()
    out.name = _s(a.Name())
    if a.DocString():
        out.doc_string = _s(a.DocString())
    t = a.Type()
    out.type = t  # ORT's AttributeType numbers equal onnx's AttributeProto.AttributeType
    if t == kind.FLOAT:
        out.f = a.F()
    elif t == kind.INT:
        out.i = a.I()
    elif t == kind.STRING:
        out.s = a.S() or b""
    elif t == kind.TENSOR:
        out.t.CopyFrom(_tensor(a.T()))
    elif t == kind.GRAPH:
        out.g.CopyFrom(_graph(a.G(), fbs))
        out.g.name = out.g.name or out.name  # ONNX requires a name; .ort keeps none
    elif t == kind.FLOATS:
        out.floats.extend(float(x) for x in a.FloatsAsNumpy()) if a.FloatsLength() else None
    elif t == kind.INTS:
        out.ints.extend(int(x) for x in a.IntsAsNumpy()) if a.IntsLength() else None
    elif t == kind.STRINGS:
        out.strings.extend(a.Strings(i) for i in range(a.StringsLength()))
    elif t == kind.TENSORS:
        out.tensors.extend(_tensor(a.Tensors(i)) for i in range(a.TensorsLength()))
    elif t == kind.GRAPHS:
        for i in range(a.GraphsLength()):
            out.graphs.append(_graph(a.Graphs(i), fbs))
            out.graphs[-1].name = out.graphs[-1].name or f"{out.name}_{i}"
    else:
        raise OrtFormatError(f"attribute '{out.name}' has unsupported type {t}")
    return out


def _value_info(v, fbs) -> ValueInfoProto:
    """A flatbuffer ValueInfo (NodeArg) -> ValueInfoProto with tensor type and shape."""
    out = ValueInfoProto()
    out.name = _s(v.Name())
    if v.DocString():
        out.doc_string = _s(v.DocString())
    type_info = v.Type()
    if type_info is None:
        return out
    if type_info.ValueType() != fbs.TypeInfoValue.TypeInfoValue.tensor_type:
        raise OrtFormatError(f"value '{out.name}' is not a tensor; not supported")
    tt = fbs.TensorTypeAndShape.TensorTypeAndShape()
    table = type_info.Value()
    tt.Init(table.Bytes, table.Pos)
    tensor_type = out.type.tensor_type
    tensor_type.elem_type = tt.ElemType()
    shape = tt.Shape()
    if shape is not None:
        tensor_type.shape.SetInParent()  # rank known, even when 0
        for i in range(shape.DimLength()):
            dim = tensor_type.shape.dim.add()
            value = shape.Dim(i).Value()
            if value is None:
                continue
            if value.DimType() == fbs.DimensionValueType.DimensionValueType.VALUE:
                dim.dim_value = value.DimValue()
            elif value.DimParam():
                dim.dim_param = _s(value.DimParam())
    return out


def _node(n, fbs) -> NodeProto:
    if n.Type() != fbs.NodeType.NodeType.Primitive:
        raise OrtFormatError(f"node '{_s(n.Name())}' is a fused node; not representable in ONNX")
    out = NodeProto()
    out.name = _s(n.Name())
    if n.DocString():
        out.doc_string = _s(n.DocString())
    out.op_type = _s(n.OpType())
    out.domain = _s(n.Domain())
    out.input.extend(_s(n.Inputs(i)) for i in range(n.InputsLength()))
    out.output.extend(_s(n.Outputs(i)) for i in range(n.OutputsLength()))
    out.attribute.extend(_attribute(n.Attributes(i), fbs) for i in range(n.AttributesLength()))
    return out


def _graph(g, fbs) -> GraphProto:
    out = GraphProto()
    if g.SparseInitializersLength():
        raise OrtFormatError("sparse initializers are not supported")
    initializers = [_tensor(g.Initializers(i)) for i in range(g.InitializersLength())]
    init_names = {t.name for t in initializers}
    infos = {}
    for i in range(g.NodeArgsLength()):
        info = _value_info(g.NodeArgs(i), fbs)
        infos[info.name] = info
    fb_nodes = [g.Nodes(i) for i in range(g.NodesLength())]
    nodes = [(n.Index(), _node(n, fbs), [_s(n.ImplicitInputs(j))
                                          for j in range(n.ImplicitInputsLength())])
             for n in fb_nodes]
    out.node.extend(topological(nodes))
    out.initializer.extend(initializers)
    for i in range(g.InputsLength()):
        name = _s(g.Inputs(i))
        if name in init_names:  # ORT saves inputs including initializers; ONNX need not
            continue
        out.input.append(infos.get(name) or onnx.helper.make_empty_tensor_value_info(name))
    for i in range(g.OutputsLength()):
        name = _s(g.Outputs(i))
        out.output.append(infos.get(name) or onnx.helper.make_empty_tensor_value_info(name))
    ends = {v.name for v in out.input} | {v.name for v in out.output} | init_names
    out.value_info.extend(v for name, v in infos.items()  # shapes ORT inferred, in NodeArg order
                          if name and name not in ends and v.HasField("type"))
    return out


def topological(nodes: list[tuple[int, NodeProto, list[str]]]) -> list[NodeProto]:
    """Order (index, node, implicit inputs) so producers come first; ties by index.

    Values produced by no node here (graph inputs, initializers, outer scope) are ready.
    Raises OrtFormatError on a cycle.
    """
    producer: dict[str, int] = {}
    for pos, (_, node, _) in enumerate(nodes):
        for name in node.output:
            if name:
                producer[name] = pos
    waiting = [0] * len(nodes)
    users: list[list[int]] = [[] for _ in nodes]
    for pos, (_, node, implicit) in enumerate(nodes):
        deps = {producer[n] for n in [*node.input, *implicit] if n in producer}
        deps.discard(pos)
        waiting[pos] = len(deps)
        for d in deps:
            users[d].append(pos)
    ready = [(nodes[p][0], p) for p in range(len(nodes)) if waiting[p] == 0]
    heapq.heapify(ready)
    order: list[NodeProto] = []
    while ready:
        _, pos = heapq.heappop(ready)
        order.append(nodes[pos][1])
        for u in users[pos]:
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, (nodes[u][0], u))
    if len(order) != len(nodes):
        raise OrtFormatError("the graph has a cycle")
    return order


def _used_domains(graph: GraphProto, found: set[str]) -> set[str]:
    for node in graph.node:
        found.add(node.domain)
        for a in node.attribute:
            if a.type == AttributeProto.GRAPH:
                _used_domains(a.g, found)
            for sub in a.graphs:
                _used_domains(sub, found)
    return found


def ort_to_onnx(data: bytes) -> ModelProto:
    """Convert the bytes of an `.ort` file to a ModelProto (see the module docstring)."""
    fbs = _fbs()
    if not fbs.InferenceSession.InferenceSession.InferenceSessionBufferHasIdentifier(data, 0):
        raise OrtFormatError("not an ORT-format model (no 'ORTM' flatbuffer identifier)")
    try:
        session = fbs.InferenceSession.InferenceSession.GetRootAsInferenceSession(data, 0)
        model = session.Model()
        if model is None or model.Graph() is None:
            raise OrtFormatError("the .ort file holds no model graph")
        out = ModelProto()
        out.ir_version = model.IrVersion()
        out.producer_name = _s(model.ProducerName())
        out.producer_version = _s(model.ProducerVersion())
        out.domain = _s(model.Domain())
        out.model_version = model.ModelVersion()
        if model.DocString():
            out.doc_string = _s(model.DocString())
        out.graph.CopyFrom(_graph(model.Graph(), fbs))
        out.graph.name = out.graph.name or "main"
        for i in range(model.MetadataPropsLength()):
            entry = model.MetadataProps(i)
            prop = out.metadata_props.add()
            prop.key, prop.value = _s(entry.Key()), _s(entry.Value())
        used = _used_domains(out.graph, {""})
        for i in range(model.OpsetImportLength()):
            opset = model.OpsetImport(i)
            domain = _s(opset.Domain())
            if domain in used or (domain == "ai.onnx" and "" in used):
                out.opset_import.add(domain=domain, version=opset.Version())
    except OrtFormatError:
        raise
    except Exception as exc:  # flatbuffers raises plain errors on truncated/garbled bytes
        raise OrtFormatError(f"cannot read the .ort flatbuffer: {exc}") from exc
    return out


def load_ort(path: Path) -> ModelProto:
    """`ort_to_onnx` of a file."""
    return ort_to_onnx(Path(path).read_bytes())
