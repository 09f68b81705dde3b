"""Prometheus metrics (`vidring serve --metrics-port PORT`), with prometheus_client.

One registry per daemon, served over HTTP on loopback by default
(`--metrics-address` to widen it).  Every metric carries the pipeline's name as a
`pipeline` label, so one Prometheus can scrape several daemons of a host.  Histograms
are fed by telemetry.py as events happen; counters and gauges are set from the daemon's
own counts once a second.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

if TYPE_CHECKING:
    from vidring.daemon.server import Daemon

# Seconds: from a fraction of a millisecond (a ready batch) to a stalled pipeline.
_WAIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
                 10, 30)
_DECODE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 5)


class Metrics:
    def __init__(self, name: str) -> None:
        self.registry = CollectorRegistry()
        labels = {"pipeline": name}
        reg = self.registry

        def counter(metric: str, doc: str) -> Any:
            return Counter(metric, doc, registry=reg, labelnames=["pipeline"]).labels(**labels)

        def gauge(metric: str, doc: str) -> Any:
            return Gauge(metric, doc, registry=reg, labelnames=["pipeline"]).labels(**labels)

        self.clips = counter("vidring_clips", "Clips decoded into the ring.")
        self.errors = counter("vidring_errors", "Clips or probes that failed.")
        self.restarts = counter("vidring_worker_restarts",
                                "Worker exits not asked for, and workers killed for stalling.")
        self.spills = counter("vidring_spills", "Batches trainers copied out of the ring.")
        self.queue_depth = gauge("vidring_queue_depth", "Batches ready in the ring.")
        self.slots = gauge("vidring_slots", "Slots in the ring.")
        self.workers = gauge("vidring_workers", "Worker processes alive.")
        self.workers_target = gauge("vidring_workers_target", "Workers wanted.")
        self.quarantined = gauge("vidring_quarantined_files", "Files quarantined.")
        self.clients = gauge("vidring_clients", "Connected trainers and tools.")
        self.trainer_wait = Histogram(
            "vidring_trainer_wait_seconds", "How long a batch request waited for its batch.",
            registry=reg, labelnames=["pipeline"], buckets=_WAIT_BUCKETS).labels(**labels)
        self.decode = Histogram(
            "vidring_decode_seconds", "Seconds of a worker per clip decoded.",
            registry=reg, labelnames=["pipeline"], buckets=_DECODE_BUCKETS).labels(**labels)
        self._seen = {"clips": 0, "errors": 0, "restarts": 0, "spills": 0}

    def serve(self, port: int, address: str) -> int:
        """Start the HTTP endpoint in a daemon thread (prometheus_client's own); returns
        the port it listens on (the one the kernel chose, for port 0)."""
        server, _ = start_http_server(port, addr=address, registry=self.registry)
        return int(server.server_port)

    def update(self, daemon: Daemon) -> None:
        errors = daemon.faults.summary()
        totals = {"clips": daemon.production.clips_total, "errors": errors.count,
                  "restarts": daemon.pool.restarts, "spills": daemon.clients.spilled_total}
        for key, total in totals.items():
            getattr(self, key).inc(max(total - self._seen[key], 0))
            self._seen[key] = total
        slots = daemon.sched.counts()
        self.queue_depth.set(slots.ready)
        self.slots.set(slots.total)
        self.workers.set(daemon.pool.alive())
        self.workers_target.set(daemon.pool.target)
        self.quarantined.set(errors.quarantined)
        self.clients.set(len(daemon.clients))
