"""The Moonshine engine's decoder loop: IO binding equals a plain `session.run` loop, and
the loop guard leaves real speech alone."""

from __future__ import annotations

import numpy as np
import pytest

from edge_server.engine.moonshine import (
    MASK_STRIDE,
    MIN_SAMPLES,
    MoonshineEngine,
    padded_for_encoder,
)
from edge_server.engine.moonshine_tokenizer import MoonshineTokenizer
from tests.conftest import DEV, LONGFORM

CLIPS = ("sherpa-test-wavs/0.wav", "sherpa-test-wavs/1.wav",
         "librispeech-test-clean-kw/1089-134691-0000.flac", "pocketsphinx-testdata/001.wav")


def alphanumeric(read, name: str) -> np.ndarray:
    """A one-second clip of the optional moonshine-alphanumeric set (skip without it)."""
    path = f"moonshine-alphanumeric/{name}.wav"
    if not (DEV / path).is_file():
        pytest.skip("the moonshine-alphanumeric set is not here (only in ../shared)")
    return read(path)


def plain_greedy(engine: MoonshineEngine, hidden: list[np.ndarray], budget: int,
                 first_token_rule: bool = True) -> list[list]:
    """Reference: numpy in, numpy out, every step through `session.run`, no row dropping.
    first_token_rule: as the engine, never EOS as a row's first token."""
    rows, frames = len(hidden), max(h.shape[0] for h in hidden)
    states = np.zeros((rows, frames, hidden[0].shape[1]), np.float32)
    mask = np.zeros((rows, frames * MASK_STRIDE), np.int64)
    for r, h in enumerate(hidden):
        states[r, : h.shape[0]] = h
        mask[r, : h.shape[0] * MASK_STRIDE] = 1
    empty = np.zeros((rows, engine.num_heads, 0, engine.head_dim), np.float32)
    past = {k: empty for k in engine._decoder_kv + engine._encoder_kv}
    ids = np.full((rows, 1), MoonshineTokenizer.bos_id, np.int64)
    out: list[list] = [[] for _ in range(rows)]
    done = [False] * rows
    for step in range(budget):
        feed = {"input_ids": ids, "encoder_hidden_states": states,
                "use_cache_branch": np.array([step > 0])}
        if engine.has_encoder_mask:
            feed["encoder_attention_mask"] = mask
        feed |= {f"past_key_values.{k}": v for k, v in past.items()}
        res = dict(zip(engine.output_names, engine.decoder.run(None, feed), strict=True))
        logits = np.array(res["logits"][:, -1])
        if step == 0 and first_token_rule:
            logits[:, MoonshineTokenizer.eos_id] = -np.inf
        nxt = logits.argmax(-1)
        for r in range(rows):
            if not done[r]:
                if nxt[r] == MoonshineTokenizer.eos_id:
                    done[r] = True
                else:
                    out[r].append(int(nxt[r]))
        if all(done):
            break
        past = {k: res[f"present.{k}"] for k in engine._decoder_kv} | (
            {k: res[f"present.{k}"] for k in engine._encoder_kv} if step == 0 else
            {k: past[k] for k in engine._encoder_kv})
        ids = nxt.reshape(-1, 1).astype(np.int64)
    return out


def test_io_binding_loop_equals_plain_session_run(engine, read):
    hidden = [engine.encode(read(c)) for c in CLIPS]
    for h in hidden:  # one by one
        assert engine._greedy_decode([h], [60], check_loops=False) == plain_greedy(
            engine, [h], 60)
    # a batch of equal rows: no row leaves early, so the int8 activation scales see the same
    # batch in both loops (mixed batches differ by int8 rounding, see docs/engine.md)
    same_rows = [hidden[2]] * 3
    assert engine._greedy_decode(same_rows, [60] * 3, check_loops=False) == plain_greedy(
        engine, same_rows, 60)


def test_loop_guard_leaves_long_form_speech_alone(engine):
    from edge_server.audio import read_audio

    audio = read_audio(LONGFORM / "two_cities.wav")  # "it was the ... of ..., it was the ..."
    hidden = engine.encode(audio)
    budget = engine.token_budget(len(audio))
    guarded = engine._greedy_decode([hidden], [budget])
    loops_before = engine.stats.loops
    assert guarded == engine._greedy_decode([hidden], [budget], check_loops=False)
    assert engine.stats.loops == loops_before
    assert len(guarded[0]) > 100


def test_short_input_is_zero_padded_at_its_end_to_two_seconds():
    assert MIN_SAMPLES == 32_000
    clip = np.linspace(-0.5, 0.5, 16_000, dtype=np.float32)
    padded = padded_for_encoder(clip)
    assert len(padded) == 32_000
    assert np.array_equal(padded[:16_000], clip) and not padded[16_000:].any()
    long = np.ones(40_000, np.float32)
    assert padded_for_encoder(long) is long


def test_a_rows_first_token_is_never_eos(base_engine):
    """Base's decoder, left to itself, ends at once on 2 s of silence (EOS first): the
    engine's rows come with speech in them (VAD), so it takes the best other token."""
    silence = np.zeros(32_000, np.float32)
    hidden = base_engine.encode(silence)
    assert plain_greedy(base_engine, [hidden], 8, first_token_rule=False) == [[]]
    tokens = base_engine._greedy_decode([hidden], [8])[0]
    assert tokens and tokens == plain_greedy(base_engine, [hidden], 8)[0]
    assert base_engine.transcribe(silence) != ""


def test_token_budget_scales_with_audio():
    assert MoonshineEngine.token_budget(0) == 8
    assert MoonshineEngine.token_budget(16_000 * 10) == 8 + 65


def test_a_looping_input_is_stopped_and_trimmed(engine, read):
    """A real loop: 8 s of faint white noise (seed 1) makes tiny say "The first is the first
    is the ..." until the token cap; the guard stops it after six copies and keeps one."""
    noise = (np.random.default_rng(1).standard_normal(16_000 * 8) * 0.003).astype(np.float32)
    hidden = engine.encode(noise)
    budget = engine.token_budget(len(noise))
    raw = engine._greedy_decode([hidden], [budget], check_loops=False)[0]
    assert len(raw) == budget  # runs to the cap unguarded
    assert engine.tokenizer.decode(raw).startswith("The first is the first is the first is")
    loops = engine.stats.loops
    text = engine.transcribe(noise)
    assert text == "The first is the"
    assert engine.stats.loops == loops + 1 and engine.stats.last_loops == [0]
    # in a batch with speech, only the looping row is cut
    speech = read("librispeech-test-clean-kw/1089-134691-0000.flac")
    assert engine.transcribe_batch([speech, noise]) == ["He could wait no longer.", text]
    assert engine.stats.last_loops == [1]


def test_speech_that_really_repeats_is_kept_whole(engine, read):
    """Sentences said three times and a "one" said twelve times are transcribed as such."""
    thrice = np.concatenate([read("librispeech-test-clean-kw/1089-134691-0000.flac")] * 3)
    assert engine.transcribe(thrice) == " ".join(["He could wait no longer."] * 3)
    fives = np.concatenate([read("pocketsphinx-testdata/004.wav")] * 3)
    assert engine.transcribe(fives) == "Five, five, five, five, five, five, five."
    ones = np.tile(alphanumeric(read, "one__petewarden_nohash_0"), 12)
    loops = engine.stats.loops
    assert engine.transcribe(ones) == ", ".join(["One"] + ["one"] * 11) + "."
    assert engine.stats.loops == loops


def test_a_runaway_on_looped_speech_is_cut(engine, read):
    """A "g" played twelve times: tiny writes "D, d, d, ..." far past twelve copies."""
    gs = np.tile(alphanumeric(read, "g__petewarden_nohash_0"), 12)
    raw = engine._greedy_decode([engine.encode(gs)], [engine.token_budget(len(gs))],
                                check_loops=False)[0]
    assert engine.tokenizer.decode(raw).count(", d") > 40
    assert engine.transcribe(gs) == "D, d"


def test_base_runaway_on_a_looped_word_is_cut(base_engine, read):
    """Moonshine base on 0.5 s of "After ..." played twelve times writes "after" until the
    token cap (47 tokens for 6 s); the guard stops it once past plausible speech."""
    clip = read("sherpa-test-wavs/0.wav")[int(0.3 * 16_000) : int(0.8 * 16_000)]
    audio = np.tile(clip, 12)
    hidden = base_engine.encode(audio)
    budget = base_engine.token_budget(len(audio))
    raw = base_engine._greedy_decode([hidden], [budget], check_loops=False)[0]
    assert len(raw) == budget
    assert base_engine.tokenizer.decode(raw).lower().count("after") > 30
    assert base_engine.transcribe(audio) == "After after"  # "After" + one copy of "after"
