"""loadtest.report: repeats combined, the JSON document and the text summary."""

import json

from loadtest.report import combine_repeats, document, summary, write_json

REQUIRED = ("streams", "segments_expected", "lost", "duplicated", "p50_final_s", "p95_final_s")


def run_row(p95, lost=0):
    return {"streams": 4, "admitted": 4, "refused_503": 0, "refused_after_hello": 0,
            "rate_limited_429": 0, "failed": 0, "segments_expected": 10, "lost": lost,
            "duplicated": 0, "out_of_order": 0, "p50_final_s": p95 / 2, "p95_final_s": p95,
            "p99_final_s": p95, "wer": 0.03, "server_peak_rss_mb": 400.0 + p95,
            "audio_s": 120.0, "wall_s": 32.0, "errors": []}


def test_repeats_are_summed_or_taken_as_median_with_their_spread(tmp_path):
    level = combine_repeats([run_row(0.5), run_row(0.9, lost=1), run_row(0.6)])
    assert level["repeats"] == 3 and level["segments_expected"] == 30 and level["lost"] == 1
    assert level["p95_final_s"] == 0.6
    assert level["spread"]["p95_final_s"] == {"median": 0.6, "min": 0.5, "max": 0.9,
                                              "iqr": 0.2, "n": 3}
    assert level["server_peak_rss_mb"] == 400.9 and len(level["runs"]) == 3
    doc = document({"mode": "sweep", "levels": [level],
                    "checks": [{"name": "x", "ok": False, "detail": "d"}]},
                   "earshot loadtest sweep", {"endpoint_ms": 600})
    assert doc["passed"] is False
    write_json(tmp_path / "r.json", doc)
    back = json.loads((tmp_path / "r.json").read_text())
    assert all(k in back["levels"][0] for k in REQUIRED)
    text = summary(doc)
    assert "FAIL  x: d" in text and "p95 over 3 runs: median 600 ms, min-max 500 ms-900 ms" in text
