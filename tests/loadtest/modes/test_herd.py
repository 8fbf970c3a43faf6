"""`earshot loadtest herd`: 300 clients at once against max_sessions 4."""

import json

from loadtest.cli import main


def test_herd_beyond_capacity_is_refused_and_the_admitted_complete(
        server_args, shared_server, tmp_path, capsys):
    out = tmp_path / "herd.json"
    # a generous refusal bound: speed is measured by the tool's runs, never asserted here
    rc = main(["herd", *server_args, "--streams", "300", "--seconds", "3",
               "--refusal-bound", "30", "--json", str(out)])
    text = capsys.readouterr().out
    (row,) = json.loads(out.read_text())["levels"]
    assert row["admitted"] == 4, text  # the server's max_sessions
    assert row["refused_503"] == 296 and row["rate_limited_429"] == 0
    assert 0 < row["refusal_max_s"] < 30  # every refusal came, and was timed
    assert row["failed"] == 0 and row["lost"] == 0 and row["duplicated"] == 0
    assert row["server_probe"] == "/api/stats" and row["server_peak_rss_mb"] > 50
    assert rc == 0, text
    assert shared_server.health()["status"] == "ready"
