"""Moonshine (v2 ONNX export) on ONNX Runtime: per-utterance encoder, batched greedy decoder.

Encoder: raw 16 kHz samples (+ attention mask where the graph takes one) -> hidden states
(~1 frame per 384 samples). It runs once per utterance, not once per padded batch: tiny's
convolutional stem normalises over the whole input (GroupNorm), so zero padding changes
the hidden states and the text (measured max |diff| 0.2-0.7 with 24 ms to 5 s of padding).
See docs/engine.md.

Decoder: merged KV-cache decoder. Step 0 (use_cache_branch=False) takes BOS and the
encoder states and returns the cross-attention K/V; later steps feed one token per row.
Prefix (`decode_batch(audios, prefixes)`, used for partials: the previous partial's
tokens as a draft, checked by default, see `_greedy_decode`): step 0 takes BOS + the
prefix in one call (that branch is causal over a sequence), so P prefix tokens cost one
decoder call instead of P; greedy steps continue from there. The decoder takes no
self-attention (padding) mask, so the rows of one decoder group must have prefixes of
equal length: each group uses only its shortest prefix on every row (a leading part of a
prefix is as valid as the whole).
Rows are padded to the longest encoder output; `encoder_attention_mask` is given at raw
sample length (the graph downsamples it with stride 384), one mask row per utterance.
A decoder without that input (Moonshine base as shipped) only batches equal-length rows.

The loop runs through IO binding: encoder states, mask and the whole KV cache stay as
OrtValues on the session's device (CUDA memory on a GPU) from step to step; only the token
ids go in and the last-position logits come out each step. CPU uses the same path with
"cpu" OrtValues. Finished rows leave the batch (on CPU at once; on CUDA when half the rows
are done, since copying the cache out and back costs more there than idle rows do).

Input shorter than 2 s is zero-padded at its end (MIN_SAMPLES), and a row's first token is
never EOS: both measured to cut errors on short utterances by half (docs/engine.md).
Every row stops at EOS, at its token budget (`TOKENS_PER_SECOND` of audio), or when it has
more tokens than its audio plausibly holds and its tail loops (repetition.py); a looping
tail is trimmed to one copy of the repeated phrase (also when the budget stops the row).

Not thread-safe: one engine per thread/process.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_server.engine import costmodel
from edge_server.engine.base import (
    AsrEngine,
    EngineError,
    Transcript,
    check_prefixes,
    validate_batch,
)
from edge_server.engine.moonshine_tokenizer import MoonshineTokenizer
from edge_server.engine.placement import CUDA, Placement
from edge_server.engine.repetition import find_loop, loop_length_to_keep, plausible_tokens
from edge_server.engine.runtime import SessionFactory

log = logging.getLogger(__name__)

MASK_STRIDE = costmodel.MASK_STRIDE  # samples per encoder frame
# Shorter input is zero-padded at its end to 2 s before encoding. Words said alone in about a
# second are often misheard otherwise (220 one-second clips of letters and digits: tiny 129
# errors -> 67, base 125 -> 53 with the first-token rule below; the dev sentences are
# unchanged). Only at the end: short clips grow, long ones cost nothing more. The sweep
# behind both rules: bench/short_utterances.py, docs/engine.md "Short utterances".
MIN_SAMPLES = 32_000
# Token cap: tiny and base both produce ~3-4 tokens per second of read speech (dev sentences:
# at most 4.6/s, base as tiny); 6.5/s + 8 leaves room for fast speech, digits and spelling.
TOKENS_PER_SECOND = 6.5
MIN_TOKEN_BUDGET = 8
CUDA_COMPACT_RATIO = 0.5  # on CUDA, drop finished rows once this share of rows is done

# kept for callers of the old names
plan_groups = costmodel.plan_groups
expected_tokens = costmodel.expected_tokens


def padded_for_encoder(audio: np.ndarray) -> np.ndarray:
    """The samples the encoder gets for `audio`: zero-padded at the end to MIN_SAMPLES."""
    if len(audio) >= MIN_SAMPLES:
        return audio
    return np.pad(audio, (0, MIN_SAMPLES - len(audio)))


@dataclass
class DecodeStats:
    """Why rows stopped, summed over the engine's life (for logs, metrics and tests)."""

    eos: int = 0
    budget: int = 0
    loops: int = 0
    loop_tokens_trimmed: int = 0
    last_loops: list[int] = field(default_factory=list)  # rows of the last batch that looped
    prefix_offered: int = 0  # draft prefix tokens given (verify mode), summed over rows
    prefix_kept: int = 0  # ... of which greedy decoding agreed with (not decoded step by step)


class MoonshineEngine(AsrEngine):
    """Batched Moonshine recognizer. Not thread-safe: one per thread/process.

    paths: the form's files by role ("encoder", "decoder", "tokenizer"), kept as `.paths`.
    `form`: the form's name (e.g. "float", "int8", "shipped"). `placement`: where the
    sessions' nodes ran in the warm-up (placement.Placement); `provider`/`device` follow it.
    """

    def __init__(self, model_id: str, paths: Mapping[str, Path], factory: SessionFactory,
                 form: str = "shipped", warm_up: bool = True) -> None:
        self.model_id = model_id
        self.first_token_never_eos = True  # the first-token rule; off only to measure it
        self.form = form
        self.paths = {role: Path(p) for role, p in paths.items()}
        self.stats = DecodeStats()
        self.tokenizer = MoonshineTokenizer.from_file(Path(paths["tokenizer"]))
        self._ort = factory.ort
        profile_dir = tempfile.mkdtemp(prefix="earshot-profile-") if warm_up else None
        try:
            prefix = f"{profile_dir}/enc" if profile_dir else None
            self.encoder = factory.create(Path(paths["encoder"]), profile_prefix=prefix)
            prefix = f"{profile_dir}/dec" if profile_dir else None
            self.decoder = factory.create(Path(paths["decoder"]), profile_prefix=prefix)
            self._inspect_decoder(Path(paths["decoder"]))
            registered = self.decoder.get_providers()[0]
            self._io_device = "cuda" if registered == CUDA else "cpu"
            self._device_id = factory.cuda_device_id
            self.placement = Placement({}, "none")
            if warm_up:
                self.placement = self._warm_up_placement()
        finally:
            if profile_dir:
                shutil.rmtree(profile_dir, ignore_errors=True)
        if self.placement.counts:
            self._provider = self.placement.main_provider()
        else:
            self._provider = registered
        if registered == CUDA and self._provider != CUDA:
            msg = (f"{model_id} ({form} form) does not really run on CUDA: "
                   f"{self.placement.summary()}")
            if factory.device == "cuda":
                raise EngineError(msg + f". Use the float form: earshot models fetch {model_id}")
            log.warning("%s; reporting it as CPU", msg)
        self.cost = costmodel.step_cost(model_id, self.device, form)

    def _inspect_decoder(self, path: Path) -> None:
        self._encoder_takes_mask = "attention_mask" in {i.name for i in self.encoder.get_inputs()}
        inputs = {i.name: i.shape for i in self.decoder.get_inputs()}
        layers = sorted({int(m.group(1)) for n in inputs
                         if (m := re.match(r"past_key_values\.(\d+)\.", n))})
        if not layers or "encoder_hidden_states" not in inputs:
            raise EngineError(f"{path}: decoder is not a Moonshine merged KV-cache decoder")
        self.num_layers = len(layers)
        kv_shape = inputs["past_key_values.0.decoder.key"]
        self.num_heads, self.head_dim = int(kv_shape[1]), int(kv_shape[3])
        self.output_names = [o.name for o in self.decoder.get_outputs()]
        # Moonshine base as shipped takes no encoder mask: only rows of equal length batch
        self.has_encoder_mask = "encoder_attention_mask" in inputs
        self._decoder_kv = [f"{layer}.decoder.{kv}" for layer in layers for kv in ("key", "value")]
        self._encoder_kv = [f"{layer}.encoder.{kv}" for layer in layers for kv in ("key", "value")]

    def _warm_up_placement(self) -> Placement:
        """Run 1 s of silence through both sessions (2 decoder steps: both If branches)
        with profiling on; the profiles say which provider ran each node."""
        audio = np.zeros(16_000, np.float32)
        self._greedy_decode([self.encode(audio)], [2], check_loops=False)
        placement = Placement({}, "none")
        for session in (self.encoder, self.decoder):
            path = Path(session.end_profiling())
            try:
                placement = placement.merged(Placement.from_profile(path))
            except (OSError, ValueError, json.JSONDecodeError) as exc:
                log.warning("could not read the placement profile %s: %s", path, exc)
        self.stats = DecodeStats()
        level = logging.INFO if placement.runs_on(placement.main_provider()) else logging.WARNING
        log.log(level, "%s (%s form): %s", self.model_id, self.form, placement.summary())
        return placement

    @property
    def provider(self) -> str:
        return self._provider

    def encode(self, audio: np.ndarray) -> np.ndarray:
        """Hidden states (frames, dim) of one utterance."""
        audio = padded_for_encoder(audio)
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
        return [t.text for t in self.decode_batch(audios)]

    def decode_batch(self, audios: Sequence[np.ndarray],
                     prefixes: Sequence[Sequence[int]] | None = None,
                     verify: bool = True) -> list[Transcript]:
        """Texts and tokens per row (AsrEngine.decode_batch). A row's prefix is cut to its
        token budget, then every row of a decoder group to the group's shortest prefix;
        the prefix counts against the budget and the loop guard like decoded tokens.
        verify=True: a prefix is a draft, kept only as far as greedy decoding agrees with
        it (the prefill's logits say where), so each row gets its free decode's tokens
        (up to float rounding near ties); verify=False: forced verbatim.
        Rows of empty audio get no tokens whatever their prefix."""
        batch = validate_batch(audios)
        forced = check_prefixes(batch, prefixes, len(self.tokenizer),
                                first_id=MoonshineTokenizer.eos_id + 1)
        out = [Transcript("")] * len(batch)
        live = [i for i, a in enumerate(batch) if len(a) > 0]
        self.stats.last_loops = []
        if not live:
            return out
        hidden = {i: self.encode(batch[i]) for i in live}
        for group in self._groups({i: h.shape[0] for i, h in hidden.items()}):
            budgets = [self.token_budget(len(batch[i])) for i in group]
            checks = [plausible_tokens(len(batch[i])) for i in group]
            n = min(min(len(forced[i]), b) for i, b in zip(group, budgets, strict=True))
            decoded = self._greedy_decode([hidden[i] for i in group], budgets, checks,
                                          prefixes=[forced[i][:n] for i in group],
                                          verify=verify)
            for row, tokens in zip(group, decoded, strict=True):
                out[row] = Transcript(self.tokenizer.decode(tokens), tuple(tokens))
        return out

    def _groups(self, frames: dict[int, int]) -> list[list[int]]:
        """Decoder sub-batches: planned by cost, or equal lengths only without a mask."""
        if self.has_encoder_mask:
            return costmodel.plan_groups(frames, self.cost)
        by_length: dict[int, list[int]] = {}
        for row, n in frames.items():
            by_length.setdefault(n, []).append(row)
        return list(by_length.values())

    def _trim_loop(self, tokens: list[int], row: int) -> None:
        """Cut a looping tail of `tokens` (in place) to one copy; count it."""
        keep = loop_length_to_keep(tokens)
        if keep is None:
            return
        self.stats.loops += 1
        self.stats.loop_tokens_trimmed += len(tokens) - keep
        self.stats.last_loops.append(row)
        del tokens[keep:]

    def _to_device(self, arr: np.ndarray):
        return self._ort.OrtValue.ortvalue_from_numpy(
            np.ascontiguousarray(arr), self._io_device, self._device_id)

    def _greedy_decode(self, hidden: list[np.ndarray], budgets: list[int],
                       loop_checks: list[int] | None = None,
                       check_loops: bool = True,
                       prefixes: Sequence[Sequence[int]] | None = None,
                       verify: bool = False) -> list[list[int]]:
        """Batched greedy search over the KV cache (IO binding). Token ids per row, no BOS/EOS.

        budgets: most tokens per row (a forced prefix included). loop_checks: token count
        from which a row's tail is checked for loops (default: plausible_tokens of its
        encoder length). check_loops=False: no loop guard at all (benchmarks, tests).
        prefixes: tokens forced at the start of each row, all of one length P (ValueError
        otherwise), at most the row's budget: step 0 feeds BOS + prefix, and each row's
        tokens start with its prefix. None or P = 0: a free decode. verify=True: the
        prefix is a draft: step 0's logits at every prefix position give the token greedy
        decoding would pick there; the rows keep the prefix up to the first position where
        any row's pick differs (k), the self-attention cache is cut to BOS + k tokens and
        decoding goes on from the picks at k: the free decode, in fewer steps (k is at most
        the rows' loop-check length, so the loop guard sees every later token as it would).
        """
        forced = [list(p) for p in prefixes] if prefixes is not None else [[]] * len(hidden)
        plen = len(forced[0]) if forced else 0
        if any(len(p) != plen for p in forced) or len(forced) != len(hidden):
            raise ValueError("the rows of one decoder group need prefixes of one length")
        if loop_checks is None:
            loop_checks = [plausible_tokens(h.shape[0] * MASK_STRIDE) for h in hidden]
        rows = len(hidden)
        frames = max(h.shape[0] for h in hidden)
        states = np.zeros((rows, frames, hidden[0].shape[1]), dtype=np.float32)
        mask = np.zeros((rows, frames * MASK_STRIDE), dtype=np.int64)
        for r, h in enumerate(hidden):
            states[r, : h.shape[0]] = h
            mask[r, : h.shape[0] * MASK_STRIDE] = 1
        states_v = self._to_device(states)
        mask_v = self._to_device(mask) if self.has_encoder_mask else None
        empty = np.zeros((rows, self.num_heads, 0, self.head_dim), dtype=np.float32)
        past = {name: self._to_device(empty) for name in self._decoder_kv + self._encoder_kv}
        ids = np.full((rows, 1 + plen), MoonshineTokenizer.bos_id, dtype=np.int64)
        if plen:
            ids[:, 1:] = np.asarray(forced, dtype=np.int64)
        batch_rows = np.arange(rows)  # original row index of each batch row
        done = np.zeros(rows, dtype=bool)  # per batch row
        out: list[list[int]] = [list(p) for p in forced]
        ratio = 1.0 if self._io_device == "cpu" else CUDA_COMPACT_RATIO
        past_enc: dict = {}
        steps, step = max(budgets) - plen, -1
        while step + 1 < steps:
            step += 1
            binding = self.decoder.io_binding()
            binding.bind_cpu_input("input_ids", ids)
            binding.bind_cpu_input("use_cache_branch", np.array([step > 0]))
            binding.bind_ortvalue_input("encoder_hidden_states", states_v)
            if mask_v is not None:
                binding.bind_ortvalue_input("encoder_attention_mask", mask_v)
            for k, v in past.items():
                binding.bind_ortvalue_input(f"past_key_values.{k}", v)
            for name in self.output_names:
                if name == "logits":
                    binding.bind_output(name, "cpu")
                else:
                    binding.bind_output(name, self._io_device, self._device_id)
            self.decoder.run_with_iobinding(binding)
            result = dict(zip(self.output_names, binding.get_outputs(), strict=True))
            logits = result["logits"].numpy()
            if step == 0 and (verify or not plen) and self.first_token_never_eos:
                # a row never ends before its first token: rows come with speech in them
                # (VAD), and base otherwise returns nothing for many short words
                logits = np.array(logits)
                logits[:, 0, MoonshineTokenizer.eos_id] = -np.inf
            cut = None  # verify: decoder cache positions to keep (BOS + agreed prefix)
            if step == 0 and plen and verify:
                picks = logits.argmax(axis=-1)  # (rows, 1 + P): greedy's token after each
                agree = (picks[:, :plen] == np.asarray(forced)).all(axis=0)
                kept = plen if agree.all() else int(np.argmin(agree))
                if check_loops:  # past its loop check a token is checked as it is added
                    kept = min(kept, min(loop_checks))
                self.stats.prefix_offered += rows * plen
                self.stats.prefix_kept += rows * kept
                next_ids = picks[:, kept]
                if kept < plen:
                    cut = 1 + kept
                    for row in out:
                        del row[kept:]
                    steps = max(budgets) - kept
            else:
                next_ids = logits[:, -1, :].argmax(axis=-1)
            for b, orig in enumerate(batch_rows):
                if done[b]:
                    continue
                token = int(next_ids[b])
                if token == MoonshineTokenizer.eos_id:
                    done[b] = True
                    self.stats.eos += 1
                    continue
                if len(out[orig]) >= budgets[orig]:
                    done[b] = True
                    self.stats.budget += 1
                    if check_loops:
                        self._trim_loop(out[orig], int(orig))
                    continue
                out[orig].append(token)
                if (check_loops and len(out[orig]) > loop_checks[orig]
                        and find_loop(out[orig]) is not None):
                    self._trim_loop(out[orig], int(orig))
                    done[b] = True
            if step == 0:  # cross-attention K/V: computed once, at step 0
                past_enc = {k: result[f"present.{k}"] for k in self._encoder_kv}
            past = {k: result[f"present.{k}"] for k in self._decoder_kv} | past_enc
            if cut is not None:  # drop the cache of the draft tokens greedy disagreed with
                past |= {k: self._to_device(result[f"present.{k}"].numpy()[:, :, :cut])
                         for k in self._decoder_kv}
            if done.all():
                break
            live = np.flatnonzero(~done)
            if len(live) <= ratio * len(done) and len(live) < len(done):
                # drop finished rows, and the padding no live row needs
                batch_rows, done, next_ids = batch_rows[live], done[live], next_ids[live]
                frames = max(hidden[r].shape[0] for r in batch_rows)
                states_v = self._to_device(states[batch_rows, :frames])
                if mask_v is not None:
                    mask_v = self._to_device(mask[batch_rows, : frames * MASK_STRIDE])
                past = {k: self._to_device(v.numpy()[live]) for k, v in past.items()
                        if k not in past_enc}
                past_enc = {k: self._to_device(v.numpy()[live][:, :, :frames])
                            for k, v in past_enc.items()}
                past.update(past_enc)
            ids = next_ids.reshape(-1, 1).astype(np.int64)
        return out
