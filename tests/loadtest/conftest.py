"""One real `earshot-server` shared by the load-test tests that can share it: 2 workers,
max_sessions 4, hello timeout 2 s, a token for everyone (so a wrong one is refused)."""

import pytest

from loadtest.speech import dev_dir
from tests.server_harness import start_server

TOKEN = "loadtest-secret"


@pytest.fixture(scope="session")
def shared_server(tmp_path_factory):
    config = tmp_path_factory.mktemp("loadtest") / "server.toml"
    config.write_text("handshake_timeout_s = 2.0\n")
    server = start_server("--workers", "2", "--max-sessions", "4", "--auth", "all",
                          "--token", TOKEN, "--config", str(config))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def short_tsv(tmp_path_factory):
    """A transcripts.tsv of the five shortest dev sentences (1-2 s): short test streams."""
    rows = (dev_dir() / "transcripts.tsv").read_text(encoding="utf-8").splitlines()[1:]
    short = [r.split("\t") for r in rows if r.split("\t")[1].split("/")[-1] in SHORT]
    path = tmp_path_factory.mktemp("speech") / "transcripts.tsv"
    path.write_text("set\tpath\ttranscript\n" + "".join(
        f"{s}\t{dev_dir() / p}\t{text}\n" for s, p, text in short), encoding="utf-8")
    return path


SHORT = ("001.wav", "002.wav", "003.wav", "004.wav", "1089-134691-0000.flac")


@pytest.fixture()
def server_args(shared_server, short_tsv) -> list[str]:
    """Command-line options that point `earshot loadtest` at the shared server, with the
    short sentences."""
    return ["--server", shared_server.url, "--token", TOKEN, "--no-progress",
            "--audio", str(short_tsv)]
