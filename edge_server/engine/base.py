"""The engine contract every model family implements."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


class EngineError(RuntimeError):
    """The engine cannot be created or cannot run (bad device, broken model, bad input)."""


@dataclass(frozen=True)
class Transcript:
    """One decoded row: its text and the token ids it was decoded from (no BOS/EOS; empty
    for engines without tokens, e.g. the no-op engine). With a forced prefix, `tokens`
    starts with the part of the prefix the engine kept (see AsrEngine.decode_batch)."""

    text: str
    tokens: tuple[int, ...] = ()


class AsrEngine(abc.ABC):
    """Batched offline recognizer: 16 kHz mono float32 arrays in, texts out.

    Not thread-safe; one instance per thread/process. `transcribe_batch` returns texts in
    input order and gives each input the same text it would get alone (up to float
    rounding near ties, see docs/engine.md).
    """

    model_id: str
    sample_rate: int = 16_000

    @property
    @abc.abstractmethod
    def provider(self) -> str:
        """The execution provider the sessions really run on, e.g. 'CPUExecutionProvider'."""

    @property
    def device(self) -> str:
        """'cuda' or 'cpu', as really used."""
        return "cuda" if self.provider.startswith("CUDA") else "cpu"

    @abc.abstractmethod
    def transcribe_batch(self, audios: Sequence[np.ndarray]) -> list[str]:
        """Texts for each 16 kHz mono float32 array, in order. Empty audio gives ''."""

    def decode_batch(self, audios: Sequence[np.ndarray],
                     prefixes: Sequence[Sequence[int]] | None = None,
                     verify: bool = True) -> list[Transcript]:
        """Like `transcribe_batch`, with each row's tokens, and optionally a token prefix
        per row (None or an empty prefix: a free decode, the same text as
        `transcribe_batch`). A prefix only saves work: an engine may use fewer of its
        tokens (a leading part) or none. verify=True (the default, what workers do): the
        prefix is a draft, kept only as far as the engine's own greedy decode agrees, so
        the result is the free decode's; verify=False: the tokens used are forced, kept
        verbatim at the start of the row's tokens. Raises EngineError for a prefix of the
        wrong count or with ids the model does not have. This default (engines without
        tokens) ignores prefixes and returns no tokens."""
        check_prefixes(audios, prefixes, vocab=None)
        return [Transcript(t) for t in self.transcribe_batch(audios)]

    def transcribe(self, audio: np.ndarray) -> str:
        """One utterance."""
        return self.transcribe_batch([audio])[0]


def validate_batch(audios: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Check and normalise engine input: 1-D, finite, float32."""
    out = []
    for i, a in enumerate(audios):
        arr = np.asarray(a, dtype=np.float32)
        if arr.ndim != 1:
            raise EngineError(f"input {i}: expected 1-D mono audio, got shape {arr.shape}")
        if not np.isfinite(arr).all():
            raise EngineError(f"input {i}: audio contains NaN or infinite samples")
        out.append(arr)
    return out


def check_prefixes(audios: Sequence[np.ndarray], prefixes: Sequence[Sequence[int]] | None,
                   vocab: int | None, first_id: int = 0) -> list[tuple[int, ...]]:
    """Validate forced prefixes: one per audio (None: all empty), each a sequence of ints in
    [first_id, vocab) when `vocab` is given (ids below `first_id`: special tokens such as
    BOS/EOS, never forced). Returns them as tuples; EngineError otherwise."""
    if prefixes is None:
        return [()] * len(audios)
    if len(prefixes) != len(audios):
        raise EngineError(f"{len(prefixes)} prefixes for {len(audios)} inputs")
    out = []
    for i, prefix in enumerate(prefixes):
        try:
            ids = tuple(int(t) for t in prefix)
        except (TypeError, ValueError):
            raise EngineError(f"input {i}: the prefix is not a sequence of token ids") from None
        if vocab is not None and any(not first_id <= t < vocab for t in ids):
            raise EngineError(f"input {i}: prefix token ids must be in [{first_id}, {vocab})")
        out.append(ids)
    return out
