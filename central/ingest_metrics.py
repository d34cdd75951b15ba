"""An ingest worker's own Prometheus endpoint (off unless ``metrics_port`` is set).

What only the worker knows: how long a message waited between arriving from the broker and
its answer (``ack.v2`` / ``alert_ack.v1``) being published, i.e. the ack latency a gateway sees
minus the network. Everything read from PostgreSQL is the central exporter's job
(``central metrics serve``); one endpoint per worker, labelled by its id (a handful of values).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

# From a few milliseconds (an idle worker) to half a minute (a database retrying).
ACK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class IngestMetrics:
    def __init__(self, worker_id: str) -> None:
        self.registry = CollectorRegistry()
        self._ack = Histogram(
            "eiot_ingest_ack_latency_seconds",
            "From a message's arrival at the worker to its answer published (stored, "
            "duplicate, rejected): the worker's share of the gateway's ack latency.",
            ["worker"],
            buckets=ACK_BUCKETS,
            registry=self.registry,
        ).labels(worker_id)
        self._unanswered = Counter(
            "eiot_ingest_answers_unpublished_total",
            "Answers the broker did not take (the gateway resends; the ledger answers again).",
            ["worker"],
            registry=self.registry,
        ).labels(worker_id)
        self._server: Any = None

    def answered(self, seconds: float) -> None:
        self._ack.observe(max(0.0, seconds))

    def unpublished(self) -> None:
        self._unanswered.inc()

    def serve(self, host: str, port: int) -> int:
        """Serve ``/metrics`` on ``host:port`` (0: a free port) in a daemon thread; the port."""
        self._server, _ = start_http_server(port, addr=host, registry=self.registry)
        return int(self._server.server_address[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
