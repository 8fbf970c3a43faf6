"""Token prefixes (`decode_batch(audios, prefixes, verify)`): step 0 prefills BOS + prefix,
rows of a decoder group share the shortest prefix, an empty prefix is a free decode; forced
(verify=False) a prefix is kept verbatim, as a draft (verify=True, the default) only as far
as greedy decoding agrees, so the result is the free decode.
Real Moonshine tiny (the default CPU form: a row's tokens never depend on its neighbours)."""

from __future__ import annotations

import pytest

from edge_server.engine.base import EngineError, Transcript
from edge_server.engine.noop import NoopEngine

CLIPS = ("sherpa-test-wavs/0.wav", "sherpa-test-wavs/1.wav",
         "librispeech-test-clean-kw/1089-134691-0000.flac", "pocketsphinx-testdata/001.wav")


@pytest.fixture(scope="module")
def clips(read):
    return [read(c) for c in CLIPS]


@pytest.fixture(scope="module")
def free(engine, clips):
    """Each clip decoded alone, without a prefix."""
    return [engine.decode_batch([a])[0] for a in clips]


def test_decode_batch_without_prefix_is_transcribe_batch(engine, clips, free):
    assert [t.text for t in free] == engine.transcribe_batch(clips)
    assert all(t.tokens and engine.tokenizer.decode(t.tokens) == t.text for t in free)
    assert engine.decode_batch(clips, [()] * len(clips)) == free


@pytest.mark.parametrize("verify", [False, True])
def test_forcing_the_start_of_the_free_decode_gives_the_free_decode(engine, clips, free,
                                                                     verify):
    for audio, ref in zip(clips, free, strict=True):
        for k in (1, len(ref.tokens) // 2, len(ref.tokens)):
            assert engine.decode_batch([audio], [ref.tokens[:k]], verify=verify) == [ref]


def test_a_group_forces_its_shortest_prefix_on_every_row(engine, clips, free):
    # one batch, different prefix lengths: every row still gets its free decode ...
    prefixes = [ref.tokens[:k] for ref, k in zip(free, (0, 3, 7, 12), strict=True)]
    assert engine.decode_batch(clips, prefixes, verify=False) == free
    # ... and equals each row decoded with the group's shortest (non-empty) prefix, even
    # where the longer prefixes are words the model would not say
    foreign = [ref.tokens[:2] + (500,) * k for ref, k in zip(free, (0, 3, 7, 12), strict=True)]
    shortest = [ref.tokens[:2] for ref in free]
    assert engine.decode_batch(clips, foreign, verify=False) == engine.decode_batch(
        clips, shortest, verify=False) == free


def test_a_draft_is_kept_only_as_far_as_greedy_agrees(engine, clips, free):
    # the free decode whatever the draft: its own tokens, a wrong tail, another clip's words
    own_then_wrong = [ref.tokens[:5] + ref.tokens[6:9] for ref in free]
    other = [free[(i + 1) % len(free)].tokens for i in range(len(free))]
    before = (engine.stats.prefix_offered, engine.stats.prefix_kept)
    assert engine.decode_batch(clips, own_then_wrong) == free
    assert engine.decode_batch(clips, other) == free
    assert engine.decode_batch(clips[:1], [free[0].tokens + free[1].tokens[:3]]) == free[:1]
    offered = engine.stats.prefix_offered - before[0]
    kept = engine.stats.prefix_kept - before[1]
    assert 0 < kept < offered  # the agreeing part was not decoded step by step


def test_a_forced_prefix_the_model_would_not_say_is_kept_verbatim(engine, clips, free):
    other = free[1].tokens[:4]  # words of another clip
    assert free[0].tokens[:4] != other
    (got,) = engine.decode_batch([clips[0]], [other], verify=False)
    assert got.tokens[:4] == other
    assert got.text.startswith(engine.tokenizer.decode(other))
    assert len(got.tokens) > 4  # it goes on decoding after the forced words


def test_a_prefix_counts_against_the_token_budget(engine, clips, free):
    budget = engine.token_budget(len(clips[0]))
    long = (free[0].tokens * 10)[: budget + 5]
    for verify in (False, True):
        (got,) = engine.decode_batch([clips[0]], [long], verify=verify)
        assert len(got.tokens) <= budget


def test_empty_audio_gets_nothing_whatever_its_prefix(engine, clips, free):
    import numpy as np

    got = engine.decode_batch([np.zeros(0, np.float32), clips[0]], [(300, 301), ()])
    assert got == [Transcript(""), free[0]]


@pytest.mark.parametrize("prefixes, message", [
    ([(5,)], "2 inputs"),
    ([(1, 5), ()], "must be in"),  # BOS is never forced
    ([(10**6,), ()], "must be in"),
    ([("x",), ()], "not a sequence of token ids"),
])
def test_bad_prefixes_are_refused(engine, clips, prefixes, message):
    with pytest.raises(EngineError, match=message):
        engine.decode_batch(clips[:2], prefixes)


def test_an_engine_without_tokens_ignores_prefixes():
    got = NoopEngine().decode_batch([[0.0] * 10, []], [(5, 6), ()])
    assert got == [Transcript("speech"), Transcript("")]
