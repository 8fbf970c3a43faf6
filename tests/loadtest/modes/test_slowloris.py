"""`earshot loadtest slowloris`: idle connections cut at the hello timeout (2 s here)."""

import json

from loadtest.cli import main


def test_idle_connections_are_cut_and_real_streams_go_on(server_args, tmp_path, capsys):
    out = tmp_path / "sl.json"
    rc = main(["slowloris", *server_args, "--idle", "100", "--streams", "2",
               "--hello-timeout", "2", "--seconds", "1", "--bound", "30", "--json", str(out)])
    text = capsys.readouterr().out
    (row,) = json.loads(out.read_text())["levels"]
    assert rc == 0, text
    assert row["idle_outcomes"]["handshake_timeout (4408)"] >= 100
    assert 1.9 <= row["idle_cut_s"]["p50"] <= 3.0
    assert row["admitted"] == 2 and row["lost"] == 0


def test_a_hello_timeout_the_server_does_not_have_fails(server_args, capsys):
    rc = main(["slowloris", *server_args, "--idle", "20", "--streams", "1",
               "--hello-timeout", "6", "--seconds", "1", "--bound", "30"])
    assert rc == 1
    assert "FAIL  idle connections cut at the hello timeout (6 s)" in capsys.readouterr().out
