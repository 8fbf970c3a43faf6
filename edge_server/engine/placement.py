"""Where a session's nodes really run, and which model files a device can run at all.

`get_providers()[0]` names the first *registered* provider, not where nodes run: with the
CUDA provider registered, nodes that have no CUDA kernel silently run on the CPU with
copies around them. Two sources tell the truth:

- `session.get_provider_graph_assignment_info()` (ONNX Runtime >= 1.23, with the session
  config `session.record_ep_graph_assignment_info=1`): filled for `.onnx` files; empty
  for `.ort` files (their partitioning is fixed when they are saved);
- a profiled run: every executed node's event carries its `provider` (works for both).

`Placement` counts nodes per provider and op type. A model "runs on" a provider when every
*compute* node (matrix products, convolutions, attention, normalisation, activation
functions, quantisation, recurrent cells: `COMPUTE_OPS`) does. Everything else (Shape,
Gather, Reshape, Concat, Unsqueeze, Cast, and elementwise Add/Mul/...) is reported but does
not count: the CUDA provider places shape computations (small int64 tensors, often Add/Mul
on shapes) on the CPU on purpose, and the profile cannot tell those from float ones cheaply.

Pure functions and frozen data; thread-safe.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"

# Ops whose only kernels are CPU kernels in ONNX Runtime's CUDA provider build
# (int8 dynamic quantisation as in Moonshine's shipped .ort files).
CPU_ONLY_OPS = frozenset({"DynamicQuantizeMatMul", "MatMulIntegerToFloat",
                          "DynamicQuantizeLinear"})

COMPUTE_OPS = frozenset({
    "MatMul", "FusedMatMul", "Gemm", "MatMulInteger", "MatMulNBits", "QLinearMatMul",
    "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "DynamicQuantizeLinear",
    "QuantizeLinear", "DequantizeLinear", "Conv", "ConvTranspose", "FusedConv", "QLinearConv",
    "ConvInteger", "Attention", "MultiHeadAttention", "GroupQueryAttention",
    "LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization",
    "SkipSimplifiedLayerNormalization", "GroupNorm", "GroupNormalization",
    "InstanceNormalization", "BatchNormalization", "Softmax", "Gelu", "FastGelu", "BiasGelu",
    "Erf", "Tanh", "Sigmoid", "Relu", "ReduceMean", "RotaryEmbedding", "LSTM", "GRU",
})


@dataclass(frozen=True)
class Placement:
    """Node counts per (provider, op type) for one or more sessions."""

    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    source: str = "profile"  # "profile", "assignment" or "none"

    @classmethod
    def from_nodes(cls, nodes: Iterable[tuple[str, str]], source: str) -> Placement:
        """From (provider, op type) pairs, one per node."""
        return cls(dict(Counter(nodes)), source)

    @classmethod
    def from_profile(cls, path: Path) -> Placement:
        """From an ONNX Runtime profile JSON: each node counted once (by its node name)."""
        seen: dict[str, tuple[str, str]] = {}
        for event in json.loads(Path(path).read_text()):
            args = event.get("args") or {}
            if event.get("cat") != "Node" or "provider" not in args:
                continue
            name = str(event.get("name", "")).removesuffix("_kernel_time")
            name = name.removesuffix("_fence_before").removesuffix("_fence_after")
            seen[name] = (args["provider"], args.get("op_name", "?"))
        return cls.from_nodes(seen.values(), "profile")

    @classmethod
    def from_assignment(cls, subgraphs) -> Placement:
        """From `session.get_provider_graph_assignment_info()`."""
        return cls.from_nodes(
            ((sg.ep_name, n.op_type) for sg in subgraphs for n in sg.get_nodes()), "assignment")

    def merged(self, other: Placement) -> Placement:
        counts = Counter(self.counts)
        counts.update(other.counts)
        sources = [s for s in dict.fromkeys((self.source, other.source)) if s != "none"]
        source = "+".join(sources) or "none"
        return Placement(dict(counts), source)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def providers(self) -> set[str]:
        return {p for p, _ in self.counts}

    def compute_providers(self) -> set[str]:
        """Providers running at least one compute node."""
        return {p for (p, op), n in self.counts.items() if n and op in COMPUTE_OPS}

    def runs_on(self, provider: str) -> bool:
        """Every compute node runs on `provider` (shape ops elsewhere are allowed)."""
        compute = self.compute_providers()
        return bool(compute) and compute == {provider}

    def fallback_ops(self, provider: str) -> Counter:
        """Op type -> count of compute nodes that do NOT run on `provider`."""
        return Counter({op: n for (p, op), n in self.counts.items()
                        if p != provider and op in COMPUTE_OPS})

    def main_provider(self) -> str:
        """The provider that runs the compute: CUDA only if all compute runs there."""
        if self.runs_on(CUDA):
            return CUDA
        compute = self.compute_providers()
        if compute and CUDA not in compute:
            return sorted(compute)[0]
        return CPU if compute else "unknown"

    def summary(self) -> str:
        """Plain words, e.g. 'all 1234 nodes on CUDAExecutionProvider' or which fell back."""
        if not self.counts:
            return "node placement unknown (no nodes recorded)"
        providers = self.providers()
        if len(providers) == 1:
            return f"all {self.total} nodes on {next(iter(providers))}"
        by_provider = Counter()
        for (p, _), n in self.counts.items():
            by_provider[p] += n
        if CUDA in providers:
            compute_off = self.fallback_ops(CUDA)
            shape_off = sum(n for (p, op), n in self.counts.items()
                            if p != CUDA and op not in COMPUTE_OPS)
            if not compute_off:
                return (f"all {self.total - shape_off} compute nodes on {CUDA} "
                        f"({shape_off} shape nodes on the CPU, as usual)")
            ops = ", ".join(f"{op} x {n}" for op, n in compute_off.most_common())
            return (f"{sum(compute_off.values())} compute nodes fell back to CPU: {ops} "
                    f"({by_provider[CUDA]} of {self.total} nodes on {CUDA})")
        return ", ".join(f"{n} nodes on {p}" for p, n in by_provider.most_common())


def graph_op_types(path: Path) -> Counter:
    """Op type -> node count of an `.onnx` or `.ort` file, subgraphs included."""
    path = Path(path)
    if path.suffix == ".ort":
        return _ort_op_types(path)
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    counts: Counter = Counter()

    def walk(graph) -> None:
        for node in graph.node:
            counts[node.op_type] += 1
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)
                for g in attr.graphs:
                    walk(g)

    walk(model.graph)
    return counts


def _ort_op_types(path: Path) -> Counter:
    import onnxruntime.tools.ort_format_model  # noqa: F401  (puts ort_flatbuffers_py on the path)
    import ort_flatbuffers_py.fbs as fbs

    buf = bytearray(path.read_bytes())
    if not fbs.InferenceSession.InferenceSession.InferenceSessionBufferHasIdentifier(buf, 0):
        raise ValueError(f"{path.name} is not an ORT format model")
    model = fbs.InferenceSession.InferenceSession.GetRootAsInferenceSession(buf, 0).Model()
    counts: Counter = Counter()

    def walk(graph) -> None:
        for i in range(graph.NodesLength()):
            node = graph.Nodes(i)
            counts[node.OpType().decode()] += 1
            for j in range(node.AttributesLength()):
                attr = node.Attributes(j)
                if attr.Type() == fbs.AttributeType.AttributeType.GRAPH:
                    walk(attr.G())
                for k in range(attr.GraphsLength()):
                    walk(attr.Graphs(k))

    walk(model.Graph())
    return counts


def cpu_only_ops(paths: Iterable[Path]) -> Counter:
    """Nodes in these files that ONNX Runtime's CUDA provider cannot run (op -> count)."""
    found: Counter = Counter()
    for p in paths:
        try:
            ops = graph_op_types(p)
        except ImportError:  # `.onnx` without the onnx package: op types are plain strings
            data = Path(p).read_bytes()
            ops = Counter({op: data.count(op.encode()) for op in CPU_ONLY_OPS})
        found.update({op: n for op, n in ops.items() if op in CPU_ONLY_OPS and n})
    return found
