"""loadtest.accounting: each expected segment exactly once, in order, within the WER bound."""

import pytest

from loadtest.accounting import account
from loadtest.client import Received
from loadtest.speech import Expected

EXPECTED = (Expected(0, 0.5, 2.0, "he could wait no longer"),
            Expected(1, 3.0, 5.0, "go forward ten meters"),
            Expected(2, 6.0, 8.0, "five five"))


def final(seg, start, end, text, at, error=None):
    return Received(seg, start, end, text, error, at)


def test_a_clean_stream_has_nothing_lost_and_its_latencies():
    t0 = 100.0
    finals = [final(0, 0.2, 2.2, "He could wait no longer.", t0 + 2.9),
              final(1, 2.7, 5.2, "Go forward ten meters.", t0 + 5.8),
              final(2, 5.7, 8.2, "Five, five.", t0 + 8.7)]
    acc = account(EXPECTED, finals, t0, endpoint_s=0.6, partials=[(t0 + 1.0, 0)])
    assert (acc.lost, acc.duplicated, acc.out_of_order, acc.over_wer) == (0, 0, 0, 0)
    assert acc.wer == 0.0
    assert acc.final_s == pytest.approx([0.3, 0.2, 0.1])  # from speech end + 0.6 s
    assert acc.final_from_speech_s == pytest.approx([0.9, 0.8, 0.7])
    assert acc.first_partial_s == pytest.approx([0.5])


def test_duplicated_missing_out_of_order_and_wrong_finals_are_counted():
    finals = [final(0, 0.2, 2.2, "he could wait no longer", 3.0),
              final(2, 5.7, 8.2, "five five", 9.0),
              final(0, 0.2, 2.2, "he could wait no longer", 9.1),  # sent twice
              final(1, 2.7, 5.2, "nothing like it at all", 9.2)]  # late and wrong
    acc = account(EXPECTED, finals, 0.0)
    assert acc.duplicated == 1 and acc.out_of_order == 1 and acc.over_wer == 1
    assert acc.lost == 0 and acc.received == 4
    missing = account(EXPECTED, finals[:2], 0.0)
    assert missing.lost == 1 and missing.duplicated == 0
    assert missing.word_errors == 4  # the lost segment's words count as deleted


def test_a_failed_decode_loses_its_segment_and_split_finals_join():
    finals = [final(0, 0.2, 1.1, "he could", 2.0), final(1, 1.1, 2.2, "wait no longer", 3.0),
              final(2, 2.7, 5.2, "", 6.0, error="decode_failed"),
              final(3, 5.7, 8.2, "five five", 9.0), final(4, 9.5, 9.9, "uh", 10.5)]
    acc = account(EXPECTED, finals, 0.0)
    assert acc.lost == 1 and acc.decode_failed == 1 and acc.unexpected == 1
    assert acc.over_wer == 0 and acc.transcript == "he could wait no longer five five"
    assert len(acc.final_s) == 2 and acc.final_s[0] == pytest.approx(3.0 - 2.6)
