"""Settings of the central exporter: the central settings plus what only the exporter reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from central.settings import CentralSettings
from edge_agent.settings_base import build


class MetricsSettings(CentralSettings):
    """``central metrics serve``: the TOML file and ``EIOT_*`` variables of the central site
    (``EIOT_PG_DSN``: a read-only login, e.g. one of the ``eiot_loader`` role), plus these."""

    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=9477, ge=0, le=65535)
    # How often the database is read; a scrape never waits for the database.
    metrics_poll_s: float = Field(default=15.0, gt=0, le=3600)
    # Ledger and quarantine rows are counted once they are this old: a transaction that began
    # earlier and committed late is still counted, once.
    metrics_settle_s: float = Field(default=5.0, ge=0, le=600)
    # Status rows received this long before the newest one seen are read again (commit order is
    # not received_at order); a gateway's current status is the one received last.
    metrics_status_overlap_s: float = Field(default=60.0, ge=0, le=3600)
    # A gateway silent this long is forgotten (its series go); at most this many are kept.
    metrics_forget_after_s: float = Field(default=7 * 86400, gt=0)
    metrics_max_gateways: int = Field(default=20_000, ge=1)
    # At most this many quarantine reason codes get a label of their own; the rest are "other".
    metrics_max_reasons: int = Field(default=64, ge=1, le=1000)
    # ClickHouse's HTTP interface (a server, or the owner of the embedded warehouse,
    # ``central warehouse serve``): the load watermarks. Empty: no warehouse metrics.
    metrics_warehouse_url: str = ""
    metrics_warehouse_poll_s: float = Field(default=60.0, gt=0)
    # dbt's own record of its last invocation, and the quality gates' (``central quality run
    # --results-file``). Unset: no such metrics.
    metrics_dbt_run_results: Path | None = None
    metrics_quality_results: Path | None = None


def load_metrics_settings(
    config_file: Path | str | None = None, **overrides: Any
) -> MetricsSettings:
    return build(MetricsSettings, config_file, **overrides)
