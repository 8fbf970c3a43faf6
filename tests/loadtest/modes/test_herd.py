"""`earshot loadtest herd`: 300 clients at once against max_sessions 4."""

import json

from loadtest.cli import main


def test_herd_beyond_capacity_is_refused_fast_and_the_admitted_complete(
        server_args, shared_server, tmp_path, capsys):
    out = tmp_path / "herd.json"
    rc = main(["herd", *server_args, "--streams", "300", "--seconds", "3",
               "--json", str(out)])
    text = capsys.readouterr().out
    (row,) = json.loads(out.read_text())["levels"]
    assert row["admitted"] == 4, text  # the server's max_sessions
    assert row["refused_503"] == 296 and row["rate_limited_429"] == 0
    assert row["refusal_max_s"] < 1.0
    assert row["failed"] == 0 and row["lost"] == 0 and row["duplicated"] == 0
    assert row["server_probe"] == "/api/stats" and row["server_peak_rss_mb"] > 50
    assert rc == 0, text
    assert shared_server.health()["status"] == "ready"
