"""loadtest.stats: percentiles and the spread over repeats."""

from loadtest.stats import fmt_s, percentiles, spread


def test_percentiles_and_empty_input():
    p = percentiles([float(x) for x in range(1, 101)])
    assert p["p50"] == 50.5 and p["p95"] == 95.05 and p["p99"] == 99.01
    assert percentiles([]) == {"p50": None, "p95": None, "p99": None}


def test_spread_over_repeats_skips_missing_runs():
    s = spread([0.4, None, 0.9, 0.5])
    assert s == {"median": 0.5, "min": 0.4, "max": 0.9, "iqr": 0.25, "n": 3}
    assert spread([None])["median"] is None
    assert fmt_s(0.1234) == "123 ms" and fmt_s(None) == "n/a"
