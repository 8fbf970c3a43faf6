"""Check every expected segment of a stream against the finals that arrived.

`account(expected, finals, t0, endpoint_s)` (pure; any thread):

- **duplicated**: final messages whose `segment` number had already arrived (each
  segment's final must come exactly once); only the first copy is used below.
- **out_of_order**: finals that arrived after one with a higher `segment` number.
- each remaining final is given to the expected segment its span overlaps most (finals
  overlapping none are `unexpected`: text where the reference has none). An expected
  segment may get several finals (the server may cut an utterance at a long pause).
- **lost**: expected segments that got no final with text (`decode_failed` finals carry
  none; `decode_failed` counts them).
- **over_wer**: segments whose text (its finals joined) has a word error rate above
  `wer_bound` against the reference (DEFAULT_WER_BOUND; lost segments are not counted
  again); `wer` is the corpus WER over all segments with a reference, lost ones included
  (their words count as deleted).
- latencies, per expected segment that arrived, of the final that closed it (the one
  ending last): `final_s` from the moment its endpoint was due (speech end + the
  server's endpoint silence, `endpoint_s`) and `final_from_speech_s` from the speech end,
  both as wall time via `t0` (the stream's second 0, see pacing); `first_partial_s`: the
  first partial of the segment's number, from the speech start (time to first words).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edge_server.evaluation import word_error_rate
from loadtest.client import Received
from loadtest.speech import Expected

# Moonshine tiny's WER on these sentences is ~3 % overall, but one short sentence can
# reach 20-30 % (a misheard name); 0.5 flags a wrong or truncated text, not an accent.
DEFAULT_WER_BOUND = 0.5


@dataclass
class Account:
    expected: int = 0
    received: int = 0  # final messages, duplicates included
    lost: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    unexpected: int = 0
    decode_failed: int = 0
    over_wer: int = 0
    words: int = 0
    word_errors: int = 0
    final_s: list[float] = field(default_factory=list)
    final_from_speech_s: list[float] = field(default_factory=list)
    first_partial_s: list[float] = field(default_factory=list)
    transcript: str = ""

    @property
    def wer(self) -> float | None:
        return self.word_errors / self.words if self.words else None

    def add(self, other: Account) -> Account:
        """Sum of two accounts (for a level of many streams)."""
        out = Account()
        for name in ("expected", "received", "lost", "duplicated", "out_of_order",
                     "unexpected", "decode_failed", "over_wer", "words", "word_errors"):
            setattr(out, name, getattr(self, name) + getattr(other, name))
        for name in ("final_s", "final_from_speech_s", "first_partial_s"):
            setattr(out, name, getattr(self, name) + getattr(other, name))
        return out


def _overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return min(a1, b1) - max(a0, b0)


def account(expected: list[Expected] | tuple[Expected, ...], finals: list[Received],
            t0: float | None = None, endpoint_s: float = 0.6,
            partials: list[tuple[float, int]] | None = None,
            wer_bound: float = DEFAULT_WER_BOUND) -> Account:
    """The account of one stream (see the module docstring). `finals` in arrival order;
    `t0` None: no latencies."""
    acc = Account(expected=len(expected), received=len(finals))
    seen: set[int] = set()
    unique: list[Received] = []
    highest = -1
    for f in finals:
        if f.segment in seen:
            acc.duplicated += 1
            continue
        seen.add(f.segment)
        if f.segment < highest:
            acc.out_of_order += 1
        highest = max(highest, f.segment)
        unique.append(f)
    assigned: dict[int, list[Received]] = {e.index: [] for e in expected}
    for f in unique:
        if f.error:
            acc.decode_failed += 1
        best, best_overlap = None, 0.0
        for e in expected:
            ov = _overlap(f.start, f.end, e.start, e.end)
            if ov > best_overlap:
                best, best_overlap = e, ov
        if best is None:
            if f.text.strip():
                acc.unexpected += 1
            continue
        assigned[best.index].append(f)
    first_partial: dict[int, float] = {}
    for at, segment in partials or []:
        first_partial.setdefault(segment, at)
    texts = []
    for e in expected:
        got = sorted(assigned[e.index], key=lambda f: f.segment)
        text = " ".join(f.text.strip() for f in got if f.text.strip())
        texts.append(text)
        if not text:
            acc.lost += 1
        if e.text is not None:
            score = word_error_rate([e.text], [text])
            acc.words += score.words
            acc.word_errors += score.errors
            if text and score.words and score.errors / score.words > wer_bound:
                acc.over_wer += 1
        if text and t0 is not None:
            closing = max(got, key=lambda f: f.end)
            acc.final_s.append(closing.at - (t0 + e.end + endpoint_s))
            acc.final_from_speech_s.append(closing.at - (t0 + e.end))
            if got[0].segment in first_partial:
                acc.first_partial_s.append(first_partial[got[0].segment] - (t0 + e.start))
    acc.transcript = " ".join(t for t in texts if t)
    return acc
