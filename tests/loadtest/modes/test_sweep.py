"""`earshot loadtest sweep` against a real server: levels x repeats, JSON and plot."""

import json

from loadtest.cli import main
from loadtest.modes.sweep import holds


def test_sweep_one_level_twice(server_args, tmp_path, capsys):
    out = tmp_path / "sweep.json"
    png = tmp_path / "sweep.png"
    rc = main(["sweep", *server_args, "--levels", "2", "--repeats", "2", "--seconds", "1",
               "--bound", "30", "--json", str(out), "--plot", str(png)])
    text = capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert rc == 0, text
    (level,) = doc["levels"]
    assert level["streams"] == 2 and level["repeats"] == 2 and len(level["runs"]) == 2
    assert level["lost"] == 0 and level["duplicated"] == 0 and level["holds"]
    assert level["segments_expected"] >= 4 and level["p95_final_s"] is not None
    assert level["spread"]["p95_final_s"]["n"] == 2
    assert doc["largest_streams"] == 2 and doc["passed"]
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "PASS  a level holds the bound" in text


def test_a_level_holds_only_under_the_bound_with_nothing_lost():
    level = {"p95_final_s": 0.8, "lost": 0, "duplicated": 0, "failed": 0, "refused_503": 0,
             "rate_limited_429": 0}
    assert holds(level, 1.0) and not holds(level, 0.8)
    assert not holds(level | {"lost": 1}, 1.0) and not holds(level | {"refused_503": 1}, 1.0)
    assert not holds(level | {"p95_final_s": None}, 1.0)
