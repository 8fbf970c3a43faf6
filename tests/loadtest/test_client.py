"""loadtest.client: one stream through the real protocol (the modes' tests stream many:
tests/loadtest/modes/); here what a stream that is not admitted reports."""

import asyncio

from loadtest.client import run_stream
from loadtest.speech import build_script, load_clips


def test_a_wrong_token_is_reported_not_raised(shared_server, short_tsv):
    script = build_script(load_clips([short_tsv]), 1.0, seed=0)
    out = asyncio.run(run_stream(shared_server.url, script, token="wrong"))
    assert out.status == "unauthorized" and out.finals == [] and out.connect_s is None
    assert out.error.startswith("unauthorized")


def test_an_unreachable_server_is_a_failed_stream():
    script = build_script(load_clips(), 1.0, seed=0)
    out = asyncio.run(run_stream("http://127.0.0.1:9", script, connect_timeout_s=2))
    assert out.status == "failed" and out.error.startswith("unreachable")
