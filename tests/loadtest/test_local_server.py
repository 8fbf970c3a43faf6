"""loadtest.local_server: settings merged into a TOML for the server it starts."""

import os
import tomllib

import pytest

from loadtest.local_server import LocalServer, ServerStartError, parse_setting, toml_text


def test_settings_parse_and_serialise(tmp_path):
    assert parse_setting("handshake_timeout_s=2") == ("handshake_timeout_s", 2)
    assert parse_setting("auth=all") == ("auth", "all")
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_setting("nothing")
    data = {"a": 1.5, "b": True, "c": ["x", "y"], "segmenter": {"endpoint_ms": 500}}
    assert tomllib.loads(toml_text(data)) == data
    base = tmp_path / "base.toml"
    base.write_text('max_batch = 8\n[segmenter]\npre_roll_ms = 200\n')
    server = LocalServer(settings={"segmenter.endpoint_ms": 500}, config=base)
    merged = tomllib.loads(server._config_path().read_text())
    assert merged == {"max_batch": 8, "segmenter": {"pre_roll_ms": 200, "endpoint_ms": 500}}


def test_a_server_that_cannot_start_is_reported_with_its_log():
    with pytest.raises(ServerStartError, match="no-such-model"):
        LocalServer(["--model", "no-such-model"]).start(ready_timeout_s=60)


def test_a_whole_environment_can_be_passed(monkeypatch):
    """A caller's env that already holds PYTHONUNBUFFERED (a copy of os.environ) starts."""
    monkeypatch.setenv("PYTHONUNBUFFERED", "1")
    with pytest.raises(ServerStartError, match="no-such-model"):
        LocalServer(["--model", "no-such-model"], env=dict(os.environ)).start(ready_timeout_s=60)
