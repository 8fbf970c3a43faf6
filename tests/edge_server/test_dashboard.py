"""The operations dashboard: a real earshot-server, real streams, real headless Chromium.

Chromium is Debian's (/usr/bin/chromium, installed by `python3 dev.py test`), driven by
Playwright; no browser is downloaded and nothing but loopback is reached.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest

from edge_server.dashboard import batch_histogram, latency_percentiles, parse_nvidia_smi
from tests.conftest import DEV, REPO, dev_rows, speech_with_pauses
from tests.server_harness import ServerProcess, start_server, stream_audio

TOKEN = "dash-token"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1200, "height": 800}
ROWS = dev_rows(("librispeech-test-clean-kw",))
AUSTEN = "pocketsphinx-testdata/sense_and_sensibility_01_austen_64kb-0"
STREAM_CLIPS = [  # two 2-6 s sentences per stream: 7-11 s of real-time audio each
    ("librispeech-test-clean-kw/1089-134686-0001.flac", AUSTEN + "880.wav"),
    ("librispeech-test-clean-kw/1089-134691-0000.flac", AUSTEN + "890.wav"),
    (AUSTEN + "930.wav", "librispeech-test-clean-kw/1089-134691-0001.flac"),
    ("pocketsphinx-testdata/005.wav", AUSTEN + "920.wav"),
]
STREAMS = len(STREAM_CLIPS)


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    srv = start_server("--workers", "1", "--threads", "1", "--token", TOKEN)
    yield srv
    assert srv.stop() == 0


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `python3 dev.py test`, which installs "
                    "Debian's chromium for this test", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def get(url: str) -> tuple[dict, bytes]:
    with urllib.request.urlopen(url, timeout=5) as resp:  # no token on purpose
        return dict(resp.headers), resp.read()


def stat(page, name: str) -> str:
    return page.locator(f'[data-stat="{name}"]').first.text_content() or ""


def stat_number(page, name: str) -> float:
    return float(stat(page, name).split()[0])


def wait_until(page, js: str, timeout_s: float = 10) -> None:
    """Wait for a condition on the page's numbers (`n('finals')` reads a data-stat)."""
    page.wait_for_function(
        "() => { const n = (k) => Number(document.querySelector(`[data-stat=\"${k}\"]`)"
        ".textContent.split(' ')[0]); return " + js + "; }", timeout=timeout_s * 1000)


class BackgroundStreams:
    """Real-time streams from a thread with its own event loop."""

    def __init__(self, url: str, audios: list[np.ndarray]) -> None:
        self.results: list = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(url, audios), daemon=True)
        self.thread.start()

    def _run(self, url: str, audios: list[np.ndarray]) -> None:
        async def all_streams():
            return await asyncio.gather(*(stream_audio(url, a, token=TOKEN, realtime=True)
                                          for a in audios))
        try:
            self.results = asyncio.run(all_streams())
        except BaseException as exc:
            self.error = exc

    def join(self, timeout: float = 60) -> list:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "streams did not finish"
        if self.error is not None:
            raise self.error
        return self.results


# ---- /api/stats --------------------------------------------------------------------------
def test_api_stats_is_open_json_with_sane_fields(server):
    audio = speech_with_pauses([DEV / ROWS[0]["path"]], pause_s=0.8)
    finals, _ = asyncio.run(stream_audio(server.url, audio, token=TOKEN))
    assert finals

    headers, body = get(server.url + "/api/stats")
    assert headers["Content-Type"].startswith("application/json")
    assert headers["Cache-Control"] == "no-store"
    s = json.loads(body)
    assert s["status"] == "ready" and s["uptime_s"] > 0
    assert s["server"]["model"] == "moonshine-tiny-en" and s["server"]["id"]
    assert s["sessions"]["active"] == 0
    assert set(s["queue"]) >= {"depth", "finals", "partials", "clips", "oldest_final_wait_s"}
    w = s["workers"]
    assert (w["ready"], w["busy"] + w["idle"], w["restarts"]) == (1, 1, 0)
    assert len(w["pids"]) == 1 and all(isinstance(p, int) for p in w["pids"])
    b = s["batch_sizes"]
    assert [x["bucket"] for x in b["buckets"]] == ["1", "2-3", "4-7", "8-15", "16+"]
    assert sum(x["count"] for x in b["buckets"]) == b["batches"] >= 1 and b["mean"] >= 1
    assert 0 < s["realtime_factor"] < 1
    lat = s["final_latency"]
    assert lat["count"] >= 1 and 0 <= lat["p50_s"] <= lat["p95_s"] < 10
    t = s["totals"]
    assert t["finals"] >= 1 and t["sessions_started"] >= 1 and t["clips_done"] == 0
    assert all(isinstance(v, int) for v in t.values())
    r = s["resources"]
    assert [p["role"] for p in r["processes"]] == ["server", "worker"]
    assert r["rss_bytes"] > 50 * 2**20 and r["cpu_percent"] >= 0
    assert 0 < r["system"]["memory_used_bytes"] < r["system"]["memory_total_bytes"]
    if shutil.which("nvidia-smi") is None:
        assert s["gpu"] is None
    else:
        assert s["gpu"] is None or s["gpu"][0]["memory_total_mib"] > 0
    assert finals[0].text.lower() not in body.decode().lower() and TOKEN not in body.decode()

    headers, page = get(server.url + "/dashboard")
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Cache-Control"] == "no-store"
    assert b'data-stat="sessions"' in page and b"http" not in page.split(b"<script>")[1]


def test_snapshot_helpers():
    h = batch_histogram([1, 1, 2, 3, 4, 8, 15, 16, 40])
    assert [x["count"] for x in h["buckets"]] == [2, 2, 1, 2, 2] and h["batches"] == 9
    assert batch_histogram([])["mean"] is None
    assert latency_percentiles([])["p50_s"] is None
    assert latency_percentiles([0.1] * 10 + [1.0])["p50_s"] == pytest.approx(0.1)
    gpus = parse_nvidia_smi("NVIDIA H100 80GB HBM3, 1234, 81559\nTesla T4, 0, 15360\n")
    assert gpus[1] == {"index": 1, "name": "Tesla T4", "memory_used_mib": 0.0,
                       "memory_total_mib": 15360.0}


def test_gpu_memory_comes_from_nvidia_smi_cached(tmp_path):
    """A stand-in nvidia-smi first on PATH (this box has no GPU): parsed, and run rarely."""
    calls = tmp_path / "calls"
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\necho x >> {calls}\n"
                    "echo 'NVIDIA H100 80GB HBM3, 2048, 81559'\n")
    fake.chmod(0o755)
    srv = start_server("--noop-engine", env={"PATH": f"{fake.parent}:{os.environ['PATH']}"})
    try:
        snapshots = [json.loads(get(srv.url + "/api/stats")[1]) for _ in range(5)]
    finally:
        srv.stop()
    assert all(s["gpu"] == [{"index": 0, "name": "NVIDIA H100 80GB HBM3",
                             "memory_used_mib": 2048.0, "memory_total_mib": 81559.0}]
               for s in snapshots)
    assert len(calls.read_text().split()) == 1  # cached for 2 s


# ---- the page in a real browser ----------------------------------------------------------
TILES = ("sessions", "queue", "workers", "rtf", "latency", "cpu", "memory", "gpu", "totals",
         "batches")


def test_dashboard_updates_live_while_streams_run(server, browser, tmp_path):
    page = browser.new_page(viewport=VIEWPORT)
    navigations: list[str] = []
    errors: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server.url + "/dashboard")
    wait_until(page, "document.querySelector('[data-stat=connection]').textContent === 'live'")
    for tile in TILES:
        assert page.locator(f'[data-tile="{tile}"]').is_visible(), tile
    assert stat(page, "status") == "ready"
    assert stat(page, "model") == "moonshine-tiny-en"
    assert stat(page, "models").startswith("moonshine-tiny-en: ")
    assert stat(page, "gpu") == "no GPU" or "/" in stat(page, "gpu")
    finals_before = stat_number(page, "finals")
    page.evaluate("window.__sameDocument = true")

    audios = [speech_with_pauses([DEV / a, DEV / b], pause_s=0.8) for a, b in STREAM_CLIPS]
    streams = BackgroundStreams(server.url, audios)
    wait_until(page, f"n('sessions') === {STREAMS}")
    wait_until(page, f"n('finals') > {finals_before} && n('sessions') > 0", timeout_s=20)
    page.wait_for_timeout(1200)  # one more poll: sparklines and bars settle
    shot = page.screenshot()
    artifacts = REPO / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    for path in (artifacts / "dashboard.png", tmp_path / "dashboard.png"):
        path.write_bytes(shot)
    assert stat_number(page, "batch-window") > 0
    assert sum(stat_number(page, f"batch-{b}") for b in ("1", "2-3", "4-7", "8-15", "16+")) > 0
    assert stat(page, "p50").endswith("ms") and stat(page, "cpu").endswith("%")

    results = streams.join()
    wait_until(page, "n('sessions') === 0")
    finals = sum(len(f) for f, _ in results)
    assert finals >= 2 * STREAMS
    wait_until(page, f"n('finals') >= {finals_before + finals}")
    assert stat_number(page, "sessions-started") >= STREAMS
    assert page.evaluate("window.__sameDocument") is True  # never reloaded
    assert navigations == [server.url + "/dashboard"] and errors == []
    page.close()


def test_dashboard_shows_disconnected_then_recovers(browser, tmp_path):
    first = start_server("--noop-engine")
    port = urlparse(first.url).port
    page = browser.new_page(viewport=VIEWPORT)
    try:
        page.goto(first.url + "/dashboard")
        wait_until(page, "document.querySelector('[data-stat=connection]').textContent === 'live'")
        first_id = stat(page, "server-id")
        assert first.stop() == 0
        wait_until(page, "document.querySelector('[data-stat=connection]').textContent "
                         "=== 'disconnected'", timeout_s=8)
        assert page.locator("#conn.disconnected").is_visible()
        # another server (its own identity) on the same port; the last --port wins
        second = start_server("--noop-engine", "--port", str(port), "--state-dir",
                              str(tmp_path / "other-box"))
        try:
            wait_until(page, "document.querySelector('[data-stat=connection]').textContent "
                             "=== 'live'", timeout_s=8)
            assert stat(page, "server-id") not in (first_id, "–")
        finally:
            second.stop()
    finally:
        first.stop()
        page.close()
