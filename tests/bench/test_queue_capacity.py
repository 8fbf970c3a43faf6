"""bench/queue_capacity.py's level search (pure rule, no server): against a box whose true
capacity is known, it must find that capacity to the sweep's resolution, in few levels
from a good start, and stop at 0 when even one stream breaks."""

import pytest

from bench.queue_capacity import next_level


def simulate(capacity: int, start: int, max_levels: int = 12) -> tuple[int, list[int]]:
    """Run the search against a box where a level holds iff it is <= capacity."""
    n: int | None = start
    step, good, bad, seen = max(1, start // 8), None, None, []
    while n is not None and len(seen) < max_levels:
        assert n not in seen, f"level {n} run twice: {seen}"
        seen.append(n)
        if n <= capacity:
            good = n if good is None else max(good, n)
        else:
            bad = n if bad is None else min(bad, n)
        n = next_level(n, step, good, bad)
        step *= 2
    return good or 0, seen


@pytest.mark.parametrize("capacity,start", [(10, 10), (10, 8), (11, 12), (3, 8), (1, 8),
                                            (20, 8), (40, 8), (64, 64), (5, 1)])
def test_finds_the_capacity_to_the_sweep_resolution(capacity, start):
    found, seen = simulate(capacity, start)
    resolution = max(1, found // 8)
    assert found <= capacity and capacity - found < resolution, (found, seen)
    assert any(capacity < s <= found + resolution for s in seen), seen  # one broke just above


def test_a_good_start_needs_two_levels():
    assert simulate(10, 10)[1] == [10, 11]
    assert simulate(10, 11)[1] == [11, 10]


def test_stops_at_zero_when_one_stream_breaks():
    found, seen = simulate(0, 8)
    assert found == 0 and seen[-1] == 1
