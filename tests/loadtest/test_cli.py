"""loadtest.cli: usage and input errors exit 2 with one clear line, before any load."""

from loadtest import cli
from tests.loadtest.conftest import TOKEN


def test_bad_url_and_unreachable_server(capsys):
    assert cli.main(["sweep", "--server", "box:8765", "--no-progress"]) == 2
    assert "bad server URL 'box:8765'" in capsys.readouterr().err
    assert cli.main(["herd", "--server", "http://127.0.0.1:9", "--no-progress"]) == 2
    assert "cannot reach http://127.0.0.1:9" in capsys.readouterr().err


def test_wrong_token(shared_server, capsys):
    assert cli.main(["herd", "--server", shared_server.url, "--token", "nope",
                     "--no-progress"]) == 2
    assert "refused the token (401 unauthorized)" in capsys.readouterr().err


def test_plot_without_matplotlib(shared_server, monkeypatch, capsys):
    monkeypatch.setattr(cli.plot, "available", lambda: False)  # cannot uninstall it here
    assert cli.main(["sweep", "--server", shared_server.url, "--token", TOKEN,
                     "--plot", "x.png", "--no-progress"]) == 2
    assert "--plot needs matplotlib: pip install 'earshot[loadtest]'" in capsys.readouterr().err


def test_local_only_options_and_bad_numbers(capsys):
    assert cli.main(["sweep", "--server", "http://h:1", "--workers", "2"]) == 2
    assert "--workers applies to --server local only" in capsys.readouterr().err
    assert cli.main(["sweep", "--repeats", "0"]) == 2
    assert "--repeats must be at least 1" in capsys.readouterr().err


def test_registered_in_the_earshot_command():
    from desktop.cli import build_parser

    args = build_parser().parse_args(["loadtest", "herd", "--streams", "5"])
    assert args.func is cli.run and args.mode == "herd" and args.streams == 5
