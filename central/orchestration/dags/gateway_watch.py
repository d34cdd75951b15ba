"""
### gateway_watch

Every 5 minutes: gateways that went silent, whose backlog keeps growing, that score nothing, or
whose quarantine suddenly spikes become operational alerts (`ops_alert.v1`) on
`{root}/ops/alerts` (published as `svc-ops`, QoS 1) and rows in the warehouse table
`ops.gateway_alerts`. An alert is sent when its condition appears and again (`resolved`) when it
clears, not on every run. Thresholds: `EIOT_WATCH_*`; the logic is
`central/orchestration/watch.py`. It runs in the `OPS` scope: `EIOT_OPS__<NAME>`, where set,
stands for `EIOT_<NAME>` (`central/orchestration/identity.py`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import dag, task


@dag(
    dag_id="gateway_watch",
    schedule=timedelta(minutes=5),
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["eiot", "operations"],
    default_args={"retries": 1, "retry_delay": timedelta(minutes=1)},
)
def gateway_watch() -> None:
    @task(multiple_outputs=False)
    def watch() -> dict[str, Any]:
        from functools import partial

        from central.orchestration import watch
        from central.orchestration.identity import OPS, acting_as
        from ml.registry import Broker, publish

        with acting_as(OPS):
            settings = watch.load_watch_settings()
            return watch.watch(settings, partial(publish, broker=Broker.from_env()))

    watch()


gateway_watch()
