"""Moonshine (v2 ONNX export) on ONNX Runtime: per-utterance encoder, batched greedy decoder.

Encoder: raw 16 kHz samples + attention mask -> hidden states (~1 frame per 384 samples).
It runs once per utterance, not once per padded batch: its convolutional stem normalises
over the whole input (GroupNorm), so zero padding changes the hidden states and the text
(measured max |diff| 0.2-0.7 with 24 ms to 5 s of padding). See docs/engine.md.

Decoder: merged KV-cache decoder. Step 0 (use_cache_branch=False) takes BOS and the
encoder states and returns the cross-attention K/V; later steps feed one token per row.
Rows are padded to the longest encoder output; `encoder_attention_mask` is given at raw
sample length (the graph downsamples it with stride 384), one mask row per utterance.
Finished rows are dropped from the batch so the loop only pays for live rows.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edge_server.engine.base import AsrEngine, EngineError, validate_batch
from edge_server.engine.moonshine_tokenizer import MoonshineTokenizer
from edge_server.engine.runtime import SessionFactory

MASK_STRIDE = 384  # samples per encoder frame, as the decoder graph downsamples the mask
MIN_SAMPLES = 1_600  # 0.1 s: shorter input is zero-padded (the conv stem needs >= 895)
TOKENS_PER_SECOND = 6.5
MIN_TOKEN_BUDGET = 8


class MoonshineEngine(AsrEngine):
    """Batched Moonshine recognizer. Not thread-safe: one per thread/process."""

    def __init__(self, model_id: str, folder: Path, factory: SessionFactory) -> None:
        self.model_id = model_id
        self.tokenizer = MoonshineTokenizer.from_file(folder / "tokenizer.bin")
        self.encoder = factory.create(folder / "encoder_model.ort")
        self.decoder = factory.create(folder / "decoder_model_merged.ort")
        self._encoder_takes_mask = "attention_mask" in {i.name for i in self.encoder.get_inputs()}
        self._provider = self.decoder.get_providers()[0]
        inputs = {i.name: i.shape for i in self.decoder.get_inputs()}
        layers = sorted({int(m.group(1)) for n in inputs
                         if (m := re.match(r"past_key_values\.(\d+)\.", n))})
        if not layers or "encoder_hidden_states" not in inputs:
            raise EngineError(f"{folder}: decoder is not a Moonshine merged KV-cache decoder")
        self.num_layers = len(layers)
        kv_shape = inputs["past_key_values.0.decoder.key"]
        self.num_heads, self.head_dim = int(kv_shape[1]), int(kv_shape[3])
        self.output_names = [o.name for o in self.decoder.get_outputs()]
        # Moonshine base's decoder takes no encoder mask: only rows of equal length batch
        self.has_encoder_mask = "encoder_attention_mask" in inputs
        self._decoder_kv = [f"{layer}.decoder.{kv}" for layer in layers for kv in ("key", "value")]
        self._encoder_kv = [f"{layer}.encoder.{kv}" for layer in layers for kv in ("key", "value")]

    @property
    def provider(self) -> str:
        return self._provider

    def encode(self, audio: np.ndarray) -> np.ndarray:
        """Hidden states (frames, dim) of one utterance."""
        if len(audio) < MIN_SAMPLES:
            audio = np.pad(audio, (0, MIN_SAMPLES - len(audio)))
        feed = {"input_values": audio[None]}
        if self._encoder_takes_mask:
            feed["attention_mask"] = np.ones((1, len(audio)), dtype=np.int64)
        (hidden,) = self.encoder.run(None, feed)
        return hidden[0]

    @staticmethod
    def token_budget(num_samples: int) -> int:
        """Most tokens an utterance of this length may produce (stops runaway loops)."""
        return MIN_TOKEN_BUDGET + math.ceil(num_samples / 16_000 * TOKENS_PER_SECOND)

    def transcribe_batch(self, audios: Sequence[np.ndarray]) -> list[str]:
        batch = validate_batch(audios)
        texts = [""] * len(batch)
        live = [i for i, a in enumerate(batch) if len(a) > 0]
        if not live:
            return texts
        hidden = {i: self.encode(batch[i]) for i in live}
        for group in self._groups({i: h.shape[0] for i, h in hidden.items()}):
            budgets = [self.token_budget(len(batch[i])) for i in group]
            decoded = self._greedy_decode([hidden[i] for i in group], budgets)
            for row, tokens in zip(group, decoded, strict=True):
                texts[row] = self.tokenizer.decode(tokens)
        return texts

    def _groups(self, frames: dict[int, int]) -> list[list[int]]:
        """Decoder sub-batches: planned by cost, or equal lengths only without a mask."""
        if self.has_encoder_mask:
            return plan_groups(frames)
        by_length: dict[int, list[int]] = {}
        for row, n in frames.items():
            by_length.setdefault(n, []).append(row)
        return list(by_length.values())

    def _greedy_decode(self, hidden: list[np.ndarray], budgets: list[int]) -> list[list[int]]:
        """Batched greedy search over the KV cache. Returns token ids per row (no BOS/EOS)."""
        rows = len(hidden)
        frames = max(h.shape[0] for h in hidden)
        states = np.zeros((rows, frames, hidden[0].shape[1]), dtype=np.float32)
        mask = np.zeros((rows, frames * MASK_STRIDE), dtype=np.int64)
        for r, h in enumerate(hidden):
            states[r, : h.shape[0]] = h
            mask[r, : h.shape[0] * MASK_STRIDE] = 1
        empty = np.zeros((rows, self.num_heads, 0, self.head_dim), dtype=np.float32)
        past = {name: empty for name in self._decoder_kv + self._encoder_kv}
        ids = np.full((rows, 1), MoonshineTokenizer.bos_id, dtype=np.int64)
        alive = np.arange(rows)  # original row index of each batch row
        out: list[list[int]] = [[] for _ in range(rows)]
        use_cache = np.array([False])
        for step in range(max(budgets)):
            feed = {"input_ids": ids, "encoder_hidden_states": states,
                    "use_cache_branch": use_cache}
            if self.has_encoder_mask:
                feed["encoder_attention_mask"] = mask
            feed.update((f"past_key_values.{k}", v) for k, v in past.items())
            result = dict(zip(self.output_names, self.decoder.run(None, feed), strict=True))
            next_ids = result["logits"][:, -1, :].argmax(axis=-1)
            keep = []
            for b, orig in enumerate(alive):
                token = int(next_ids[b])
                if token == MoonshineTokenizer.eos_id or step >= budgets[orig]:
                    continue
                out[orig].append(token)
                keep.append(b)
            new_past = {k: result[f"present.{k}"] for k in self._decoder_kv}
            for k in self._encoder_kv:  # cross-attention K/V: computed once, at step 0
                new_past[k] = result[f"present.{k}"] if step == 0 else past[k]
            past = new_past
            if not keep:
                break
            if len(keep) < len(alive):  # drop finished rows, and padding no live row needs
                sel = np.asarray(keep)
                alive = alive[sel]
                frames = max(hidden[r].shape[0] for r in alive)
                mask = mask[sel, : frames * MASK_STRIDE]
                states = states[sel, :frames]
                past = {k: v[sel] for k, v in past.items()}
                for k in self._encoder_kv:
                    past[k] = past[k][:, :, :frames]
                next_ids = next_ids[sel]
            ids = next_ids.reshape(-1, 1).astype(np.int64)
            use_cache = np.array([True])
        return out


# Cost model of one decoder step on CPU, fitted on this model (ms, 1 thread, see
# docs/engine.md): fixed + per live row + per live row per padded encoder frame.
STEP_FIXED_MS, ROW_MS, ROW_FRAME_MS = 1.65, 0.41, 0.0025
FRAMES_PER_SECOND = 16_000 / MASK_STRIDE


def expected_tokens(frames: int) -> float:
    """Typical token count of an utterance with this many encoder frames (~4 per second)."""
    return 2.0 + 4.0 * frames / FRAMES_PER_SECOND


def plan_groups(frames: dict[int, int], max_rows: int = 64) -> list[list[int]]:
    """Split rows into decoder sub-batches of similar length, minimising modelled time.

    Every row pays for the longest encoder output in its group (cross-attention over
    padding), while every extra group pays the fixed per-step cost; a dynamic programme
    over rows sorted by length picks the cheapest contiguous split.
    """
    order = sorted(frames, key=frames.__getitem__)
    n = len(order)
    best = [0.0] + [float("inf")] * n
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        longest = frames[order[j - 1]]
        row_cost = 0.0
        for i in range(j - 1, max(-1, j - 1 - max_rows), -1):
            row_cost += expected_tokens(frames[order[i]]) * (ROW_MS + ROW_FRAME_MS * longest)
            cost = best[i] + expected_tokens(longest) * STEP_FIXED_MS + row_cost
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], n
    while j > 0:
        groups.append(order[cut[j] : j])
        j = cut[j]
    return groups[::-1]
