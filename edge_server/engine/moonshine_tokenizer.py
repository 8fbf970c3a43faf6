"""Moonshine's `tokenizer.bin`: a list of byte strings, token id = position.

Each entry is prefixed by its length: one byte, or two when the first is >= 128
(`(b0 - 128) + (b1 << 7)`). Pieces use U+2581 ('▁') for a word boundary.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from pathlib import Path

WORD_BOUNDARY = "\u2581".encode()


class MoonshineTokenizer:
    """Decodes token ids to text. Immutable after construction; thread-safe."""

    bos_id = 1
    eos_id = 2

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces

    @classmethod
    def from_file(cls, path: Path) -> MoonshineTokenizer:
        data = Path(path).read_bytes()
        pieces: list[bytes] = []
        i = 0
        while i < len(data):
            n = data[i]
            i += 1
            if n >= 128:
                if i >= len(data):
                    raise ValueError(f"{path}: truncated length prefix at byte {i}")
                n = (n - 128) + (data[i] << 7)
                i += 1
            if i + n > len(data):
                raise ValueError(f"{path}: entry {len(pieces)} runs past the end of the file")
            pieces.append(data[i : i + n])
            i += n
        return cls(pieces)

    def __len__(self) -> int:
        return len(self.pieces)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of a token id sequence (special tokens dropped)."""
        raw = b"".join(self.pieces[i] for i in ids if i > self.eos_id)
        return raw.replace(WORD_BOUNDARY, b" ").decode("utf-8", errors="replace").strip()

    def sherpa_tokens_txt(self) -> str:
        """The `tokens.txt` sherpa-onnx's from_moonshine_v2 expects: `base64(bytes) id` lines."""
        return "".join(
            f"{base64.b64encode(p).decode('ascii')} {i}\n" for i, p in enumerate(self.pieces)
        )
