"""An engine that does no inference: for measuring the server's own overhead."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edge_server.engine.base import AsrEngine


class NoopEngine(AsrEngine):
    """Returns 'speech' for every input without running a model."""

    model_id = "noop"

    @property
    def provider(self) -> str:
        return "none"

    def transcribe_batch(self, audios: Sequence[np.ndarray]) -> list[str]:
        return ["speech" if len(a) else "" for a in audios]
