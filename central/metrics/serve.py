"""``central metrics serve``: poll the database in the background, serve /metrics over HTTP.

A scrape reads the state the last poll left (it never waits for the database), so a slow
database cannot make scrapes time out; ``eiot_metrics_last_poll_success_timestamp_seconds``
says how fresh that state is.
"""

from __future__ import annotations

import logging
import threading

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.process_collector import ProcessCollector

from central.metrics.collector import FleetCollector
from central.metrics.poll import Poller
from central.metrics.settings import MetricsSettings
from central.metrics.state import ExporterState

log = logging.getLogger(__name__)


class Exporter:
    """The state, its poller and the registry that exposes them (the HTTP server apart)."""

    def __init__(self, settings: MetricsSettings) -> None:
        self.settings = settings
        self.state = ExporterState(settings.metrics_max_gateways, settings.metrics_max_reasons)
        self.poller = Poller(settings, self.state)
        self.registry = CollectorRegistry()
        self.registry.register(FleetCollector(self.state))
        ProcessCollector(registry=self.registry)  # its own CPU and memory

    def run(self, stop: threading.Event) -> None:
        """Serve until ``stop`` is set; poll every ``metrics_poll_s``."""
        s = self.settings
        server, thread = start_http_server(s.metrics_port, s.metrics_host, self.registry)
        port = server.server_address[1]
        log.info("metrics: serving http://%s:%s/metrics", s.metrics_host, port)
        try:
            while not stop.is_set():
                self.poller.poll()
                stop.wait(s.metrics_poll_s)
        finally:
            server.shutdown()
            server.server_close()
            thread.join(5)
            self.poller.close()
