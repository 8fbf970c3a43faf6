"""A worker on a second host (network namespace, tests/netns_lan.py) decodes through a
Redis bound to the first host's LAN address: nothing in the queue is loopback-bound."""

from __future__ import annotations

import pytest

from tests import netns_lan
from tests.conftest import DEV, dev_rows
from tests.netns_lan import BIN, NetnsLan
from tests.redis_server import RedisServer

pytestmark = pytest.mark.skipif(not netns_lan.available(),
                                reason="needs root and iproute2 (network namespaces)")

ROW = dev_rows(("pocketsphinx-testdata",))[0]
ASK = """
import sys, time, redis
from edge_server.audio import read_audio
from edge_server.queue import streams as S
r = redis.Redis.from_url(sys.argv[1])
r.xgroup_create(S.result_stream("lan-gw"), S.RESULT_GROUP, id="0", mkstream=True)
r.xadd(S.task_stream("moonshine-tiny-en", True),
       S.encode_task("lan-gw", "0.0", "moonshine-tiny-en", read_audio(sys.argv[2])))
end = time.monotonic() + 60
while time.monotonic() < end:
    got = r.xrange(S.result_stream("lan-gw"))
    if got:
        fields = got[0][1]
        print("WORKER", fields[b"worker"].decode(), "TEXT", fields[b"text"].decode())
        break
    time.sleep(0.1)
"""


def test_a_worker_on_another_host_decodes_through_the_gateways_redis():
    lan = NetnsLan()
    redis = worker = None
    try:
        gateway, box = lan.add_host("gw"), lan.add_host("box")
        redis = RedisServer.start(password="lan-pass", host=gateway.ip,
                                  netns=gateway.command())
        # the installed command on its defaults (model, device, threads): only the queue
        worker = lan.start(box, str(BIN / "earshot-worker"), "--queue", redis.url)
        worker.wait_for("earshot-worker ready", timeout=60)
        out = gateway.python("-c", ASK, redis.url, str(DEV / ROW["path"]), timeout=90)
        assert out.returncode == 0, out.stderr
        assert "WORKER" in out.stdout and "TEXT" in out.stdout, (out.stdout, worker.log)
        text = out.stdout.split("TEXT", 1)[1].strip().lower()
        assert text and set(text.split()) & set(ROW["transcript"].lower().split())
    finally:
        if worker is not None:
            worker.stop()
        if redis is not None:
            redis.stop()
        lan.close()
