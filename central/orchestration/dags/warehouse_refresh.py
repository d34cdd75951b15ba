"""
### warehouse_refresh

Every 15 minutes: the raw readings PostgreSQL stored since the last run go to the warehouse,
dbt rebuilds the marts (every model, its data tests and the unit tests), and Great
Expectations checks raw and marts. Only when the gate passes is the **`marts`** asset updated,
which starts `model_lifecycle` and tells every consumer the marts are fresh and sound.

* **load**: `central warehouse load`, incremental by watermark (a run with no new data loads
  nothing and changes nothing).
* **dbt_build**: one `dbt build`; the task's result lists every node's status and time.
* **quality_gate**: fails with the failing expectations and the Data Docs page.

Settings come from the environment (`EIOT_PG_DSN` of the loader's login,
`EIOT_CLICKHOUSE_DSN`); the steps are `central/orchestration/steps.py`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import dag, task

from central.orchestration.assets import MARTS


@dag(
    dag_id="warehouse_refresh",
    schedule=timedelta(minutes=15),
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["eiot", "warehouse"],
    default_args={"retries": 1, "retry_delay": timedelta(minutes=2)},
)
def warehouse_refresh() -> None:
    @task
    def load() -> dict[str, int]:
        from central.orchestration import steps

        return steps.load_warehouse(steps.settings())

    @task
    def dbt_build(loaded: dict[str, int]) -> dict[str, Any]:
        from central.orchestration import steps

        return steps.build_marts(steps.settings())

    @task(outlets=[MARTS], retries=0)
    def quality_gate(built: dict[str, Any]) -> dict[str, Any]:
        from central.orchestration import steps

        s = steps.settings()
        docs = Path(s.gx_dir) / "uncommitted" / "data_docs" / "local_site"
        result = steps.quality_gate(s, docs)
        result["marts_rows"] = steps.mart_rows(s)
        return result

    quality_gate(dbt_build(load()))


warehouse_refresh()
