"""The loop guard on token sequences: loops are found and trimmed, real repetition is kept."""

from edge_server.engine.repetition import (
    MIN_LOOP_TOKENS,
    find_loop,
    loop_length_to_keep,
    min_repeats,
    trim_loop,
)


def test_thresholds_by_unit_length():
    assert [min_repeats(p) for p in (1, 2, 3, 4, 5, 6, 16, 40)] == [20, 10, 7, 5, 4, 4, 4, 4]


def test_single_token_stutter_needs_twenty_copies():
    no = 694  # "▁no"
    assert find_loop([1, 2] + [no] * (MIN_LOOP_TOKENS - 1)) is None  # "no no no ..." x19
    assert find_loop([1, 2] + [no] * MIN_LOOP_TOKENS) == (1, 20)
    assert trim_loop([1, 2] + [no] * 25) == [1, 2, no]


def test_real_speech_repetition_survives():
    five, no, row, your, boat = 5, 6, 7, 8, 9
    for tokens in ([five, five], [no, no, no, no, no], [row, row, row, your, boat],
                   [1, 2, 3] * 2 + [4], [10, 11, 12, 13, 14, 15] * 3,  # a sentence x3
                   [1] + [5, 6] * 7):  # "Five, five, five, five, five, five, five,"
        assert find_loop(tokens) is None, tokens
        assert trim_loop(list(tokens)) == list(tokens)


def test_phrase_loop_is_trimmed_to_one_copy():
    phrase = [40, 41, 42, 43, 44, 45, 46]  # 7 tokens: 4 copies make a loop
    tokens = [10, 11] + phrase * 4
    assert find_loop(tokens) == (7, 4)
    assert trim_loop(tokens) == [10, 11, *phrase]


def test_loop_detected_only_at_the_tail():
    tokens = [7, 8] * 10 + [1, 2, 3]  # looped earlier, recovered since
    assert find_loop(tokens) is None


def test_keep_counts_every_back_to_back_copy():
    unit = [3, 4, 5, 6]
    tokens = [9] + unit * 6
    assert loop_length_to_keep(tokens) == 5


def test_shortest_unit_wins_and_empty_input():
    assert find_loop([5] * 32) == (1, 20)
    assert find_loop([]) is None
    assert trim_loop([]) == []
