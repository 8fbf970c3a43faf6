"""loadtest.target: bad URLs, unreachable servers and refused tokens are clear errors."""

import pytest

from loadtest.target import Target, TargetError, check_url, preflight
from tests.loadtest.conftest import TOKEN


def test_urls():
    assert check_url("ws://box:8765/") == "http://box:8765"
    assert check_url("https://10.0.0.2:8765") == "https://10.0.0.2:8765"
    for bad in ("box:8765", "ftp://box", "http://", "http://box:port"):
        with pytest.raises(TargetError, match="bad server URL"):
            check_url(bad)


def test_unreachable_server():
    with pytest.raises(TargetError, match="cannot reach"):
        preflight(Target("http://127.0.0.1:9"))


def test_wrong_token_and_right_token(shared_server):
    with pytest.raises(TargetError, match="401"):
        preflight(Target(shared_server.url, token="wrong"))
    assert preflight(Target(shared_server.url, token=TOKEN))["status"] == "ready"
