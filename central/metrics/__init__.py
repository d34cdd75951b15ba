"""Central's Prometheus exporter: the fleet's health (from status.v1 in raw.gateway_status) and
the ingest's, the warehouse's and the quality gates' results (docs/monitoring.md)."""

from central.metrics.serve import Exporter
from central.metrics.settings import MetricsSettings, load_metrics_settings

__all__ = ["Exporter", "MetricsSettings", "load_metrics_settings"]
