"""Prometheus metrics of one edge server (`GET /metrics`, text format, prometheus-client).

Event metrics (histograms, counters) are observed as batches finish; state metrics
(sessions, queue depth, workers, real-time factor) are read from the server when scraped.
Each server has its own registry, so several servers in one process (tests, the embedded
server) never mix. Event loop thread only.
"""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

if TYPE_CHECKING:
    from edge_server.app import EdgeServer
    from edge_server.scheduler import DecodeRequest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ServerMetrics:
    def __init__(self, server: EdgeServer) -> None:
        self.server = server
        self.registry = CollectorRegistry()  # collect() runs at scrape time only
        r = self.registry
        self.batch_size = Histogram("earshot_batch_size", "Requests per decoded batch",
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.decode_seconds = Histogram(
            "earshot_batch_decode_seconds", "Wall time to decode one batch on a worker",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4), registry=r)
        self.final_latency = Histogram(
            "earshot_final_latency_seconds",
            "From a segment's close (endpoint detected) to its final being decoded",
            buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0), registry=r)
        self.decoded = Counter("earshot_decoded_requests", "Decoded requests by kind",
                               ["kind"], registry=r)
        self.audio_decoded = Counter("earshot_decoded_audio_seconds",
                                     "Audio seconds decoded, by kind", ["kind"], registry=r)
        self._recent: deque[tuple[float, float, float]] = deque(maxlen=200)
        r.register(_LiveState(self))

    def observe_batch(self, batch: list[DecodeRequest], seconds: float) -> None:
        now = time.monotonic()
        self.batch_size.observe(len(batch))
        self.decode_seconds.observe(seconds)
        audio = 0.0
        for req in batch:
            self.decoded.labels(req.kind).inc()
            self.audio_decoded.labels(req.kind).inc(req.seconds)
            audio += req.seconds
            if req.kind == "final":
                self.final_latency.observe(now - (req.speech_end or req.created))
        self._recent.append((now, seconds, audio))

    def realtime_factor(self) -> float:
        """Decode seconds per audio second over the recent batches (0 when idle)."""
        audio = sum(a for _, _, a in self._recent)
        return sum(s for _, s, _ in self._recent) / audio if audio else 0.0

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _LiveState:
    """Values read from the running server at scrape time."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self.metrics = metrics

    def collect(self):
        s = self.metrics.server
        gauges = {
            "earshot_sessions": ("Sessions not yet ended", s.registry.active),
            "earshot_queue_depth": ("Queued decode requests", s.scheduler.queue_depth),
            "earshot_oldest_final_wait_seconds": ("Wait of the oldest queued final",
                                                  s.scheduler.oldest_final_wait()),
            "earshot_workers_ready": ("Worker processes ready", s.pool.ready_count),
            "earshot_workers_busy": ("Worker processes decoding",
                                     s.pool.ready_count - s.pool.idle_count),
            "earshot_realtime_factor": ("Decode time per audio second, recent batches",
                                        self.metrics.realtime_factor()),
        }
        queue = s.pool.queue_stats() if hasattr(s.pool, "queue_stats") else None
        if queue is not None:  # --queue (edge_server/queue): the pool across machines
            gauges.update({
                "earshot_queue_length": ("Tasks in the Redis streams (waiting or decoding)",
                                         queue["queue_length"]),
                "earshot_queue_oldest_task_age_seconds": ("Age of the oldest task in Redis",
                                                          queue["oldest_task_age_s"]),
                "earshot_queue_workers_live": ("Workers with a fresh heartbeat",
                                               queue["live_workers"]),
                "earshot_queue_up": ("1 while Redis is reachable", 0 if queue["lost"] else 1),
            })
        for name, (doc, value) in gauges.items():
            yield GaugeMetricFamily(name, doc, value=value)
        counters = {
            "earshot_worker_restarts": ("Worker processes restarted", s.pool.restart_count),
            "earshot_sessions_started": ("Sessions started", s.stats["sessions_started"]),
            "earshot_sessions_resumed": ("Sessions resumed", s.stats["sessions_resumed"]),
            "earshot_sessions_rejected": ("Sessions refused (503/429)",
                                          s.stats["sessions_rejected"]),
            "earshot_partials_dropped": ("Partials coalesced or shed under load",
                                         s.scheduler.stats.partials_dropped),
            "earshot_decode_failures": ("Requests that could not be decoded",
                                        s.scheduler.stats.failed),
        }
        if queue is not None:
            counters.update({
                "earshot_queue_dead_letters": ("Rows dead-lettered by workers (poison)",
                                               queue["dead_letters"]),
                "earshot_queue_duplicates_dropped": ("Late duplicate results dropped",
                                                     queue["duplicates_dropped"]),
            })
        for name, (doc, value) in counters.items():
            yield CounterMetricFamily(name, doc, value=value)
