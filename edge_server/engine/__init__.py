"""Speech recognition engines: batched ONNX Runtime decoders, one module per model family.

`create_engine(model_id, device, threads)` returns an `AsrEngine` for a catalog id.
Engines are not thread-safe: one engine per thread or process (workers own theirs).
"""

from edge_server.engine.base import AsrEngine, EngineError
from edge_server.engine.registry import create_engine

__all__ = ["AsrEngine", "EngineError", "create_engine"]
