"""Runaway-decoding guard: spot a token sequence whose tail loops, and trim the loop.

A greedy decoder that has lost its place in the audio tends to repeat one phrase until the
token cap ("and the and the and the ..." or a whole sentence again and again). Real speech
repeats too ("no no no", "five, five, five, ...", a sentence said three times), so a tail
counts as a loop only when one unit of `p` tokens is repeated back to back at least
`min_repeats(p)` times: `max(MIN_REPEATS, ceil(MIN_LOOP_TOKENS / p))` — a one-token unit
needs 20 copies, a two-token unit ("five ,") 10, three tokens 7, four 5, five or more 4.

Copies alone cannot tell a loop from speech that really repeats: a one-second clip of "one"
played twelve times is twelve "one,"s, and tiny writes exactly that. So the guard also asks
the audio: a row is only checked once it has more tokens than speech of its length plausibly
holds (`plausible_tokens`: 5 per second + 8; read speech on the dev sets peaks at 4.8/s for
tiny and base), i.e. once it is running away; the token cap (engine) comes later still.
Measured: dev sentences said three times in a row, twelve-fold letter and digit clips —
kept whole; tiny on 8 s of faint noise ("The first is the first is ...") and on looped
letters ("D, d, d, d, ..." far past twelve) — cut to one copy.

Pure functions over token id lists; thread-safe.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

MIN_LOOP_TOKENS = 20  # a loop covers at least this many tokens ...
MIN_REPEATS = 4  # ... and at least this many copies of its unit
MAX_PERIOD = 48  # longest unit looked for (tokens): a long sentence
PLAUSIBLE_TOKENS_PER_SECOND = 5.0  # more tokens than this (+ slack) means a runaway row
PLAUSIBLE_SLACK = 8


def plausible_tokens(num_samples: int, sample_rate: int = 16_000) -> int:
    """Most tokens real speech of this length gives; rows past it are checked for loops."""
    return PLAUSIBLE_SLACK + math.ceil(num_samples / sample_rate * PLAUSIBLE_TOKENS_PER_SECOND)


def min_repeats(period: int) -> int:
    """Copies of a `period`-token unit that make a loop."""
    return max(MIN_REPEATS, math.ceil(MIN_LOOP_TOKENS / period))


def find_loop(tokens: Sequence[int]) -> tuple[int, int] | None:
    """(period, copies) of a loop at the end of `tokens`, or None.

    The shortest looping unit wins ("a a a a" is period 1, not period 2). Cost: one
    comparison per candidate period whose last token differs, so cheap per decoder step.
    """
    n = len(tokens)
    last = tokens[-1] if n else None
    for p in range(1, min(MAX_PERIOD, n // MIN_REPEATS) + 1):
        if tokens[n - 1 - p] != last:
            continue
        need = min_repeats(p)
        if need * p > n:
            continue
        copies = 1
        while (copies + 1) * p <= n and tokens[n - (copies + 1) * p : n - copies * p] == (
            tokens[n - p : n]
        ):
            copies += 1
            if copies >= need:
                return p, copies
    return None


def loop_length_to_keep(tokens: Sequence[int]) -> int | None:
    """How many tokens to keep when the tail loops (one copy of the unit), else None.

    Counts every copy back to back, so the kept text holds the phrase once.
    """
    found = find_loop(tokens)
    if found is None:
        return None
    p, _ = found
    n = len(tokens)
    copies = 1
    while (copies + 1) * p <= n and tokens[n - (copies + 1) * p : n - copies * p] == (
        tokens[n - p : n]
    ):
        copies += 1
    return n - (copies - 1) * p


def trim_loop(tokens: list[int]) -> list[int]:
    """`tokens` with a looping tail cut to one copy of its unit (unchanged if no loop)."""
    keep = loop_length_to_keep(tokens)
    return tokens if keep is None else tokens[:keep]
