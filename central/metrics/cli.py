"""``central metrics ...``: argparse subcommands."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path


def cmd_serve(args: argparse.Namespace) -> int:
    from central.metrics import Exporter, load_metrics_settings

    overrides: dict[str, object] = {}
    if args.port is not None:
        overrides["metrics_port"] = args.port
    if args.host is not None:
        overrides["metrics_host"] = args.host
    exporter = Exporter(load_metrics_settings(args.config, **overrides))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    exporter.run(stop)
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    m = subparsers.add_parser(
        "metrics",
        help="Prometheus exporter of the fleet's and central's health",
        description="Prometheus metrics for the whole fleet (from status.v1 messages stored in "
        "raw.gateway_status) and for central (ingest ledger, quarantine, warehouse, dbt and "
        "quality results). See docs/monitoring.md.",
    )
    m_sub = m.add_subparsers(dest="metrics_command", required=True, metavar="COMMAND")
    s = m_sub.add_parser(
        "serve",
        help="read PostgreSQL every metrics_poll_s and serve /metrics until stopped",
        description="Serve /metrics over HTTP. Settings: the central TOML file and EIOT_* "
        "variables (EIOT_PG_DSN, a read-only login; EIOT_METRICS_POLL_S, "
        "EIOT_METRICS_WAREHOUSE_URL, EIOT_METRICS_DBT_RUN_RESULTS, "
        "EIOT_METRICS_QUALITY_RESULTS...).",
    )
    s.add_argument("--config", type=Path, help="TOML settings file")
    s.add_argument("--port", type=int, help="port to listen on (default 9477; 0 = any free)")
    s.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    s.set_defaults(func=cmd_serve)
