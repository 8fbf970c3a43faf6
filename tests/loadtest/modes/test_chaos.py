"""`earshot loadtest chaos`: kill -9 a worker of a real server while streams run."""

import json

from loadtest.cli import main


def test_killed_workers_lose_and_duplicate_nothing(server_args, shared_server, tmp_path,
                                                   capsys):
    out = tmp_path / "chaos.json"
    restarts = shared_server.health()["worker_restarts"]
    rc = main(["chaos", *server_args, "--server-pid", str(shared_server.proc.pid),
               "--streams", "3", "--seconds", "4", "--kill-every", "2", "--bound", "30",
               "--json", str(out)])
    text = capsys.readouterr().out
    (row,) = json.loads(out.read_text())["levels"]
    assert rc == 0, text
    assert row["kills"] >= 1 and shared_server.health()["worker_restarts"] > restarts
    assert row["lost"] == 0 and row["duplicated"] == 0 and row["segments_expected"] >= 3
    assert row["server_probe"] == "local"


def test_chaos_on_a_remote_server_needs_a_way_to_kill(server_args, capsys):
    assert main(["chaos", *server_args, "--seconds", "1"]) == 2
    assert "--kill-cmd" in capsys.readouterr().err
