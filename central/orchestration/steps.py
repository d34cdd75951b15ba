"""The central pipeline's steps as plain functions: what the Airflow DAGs
(``central/orchestration/dags/``) run, testable and runnable without Airflow.

Each step takes the warehouse settings (``EIOT_*``, ``central/warehouse/settings.py``) and
returns a small JSON-able summary (it becomes the task's XCom and its log). A step that fails
raises with what an operator needs: the failing dbt nodes, the Data Docs page of a failed
quality gate.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from central.warehouse.client import connect, served
from central.warehouse.dbt import run_dbt
from central.warehouse.settings import WarehouseSettings, get_settings

log = logging.getLogger(__name__)

MART_SCHEMA = "marts"


class StepFailed(RuntimeError):
    """A step that must stop the run (the DAG's task fails with this message)."""


def settings(**overrides: Any) -> WarehouseSettings:
    return get_settings(**overrides)


def load_warehouse(s: WarehouseSettings) -> dict[str, int]:
    """PostgreSQL raw → ClickHouse raw, incrementally (``central warehouse load``): rows loaded
    per table."""
    from central.warehouse.loader import load

    with served(s.clickhouse_dsn) as url:
        loads = load(s.model_copy(update={"clickhouse_dsn": url}))
    return {t.table: t.rows for t in loads}


def build_marts(s: WarehouseSettings, target_path: Path | None = None) -> dict[str, Any]:
    """``dbt build``: every model, its data tests and the unit tests, in one dbt process. Returns
    each node's status and time (from dbt's ``run_results.json``): the per-model view."""
    env = {"DBT_TARGET_PATH": str(target_path)} if target_path else None
    done = run_dbt(s, ["build"], capture=True, extra_env=env)
    target = target_path or Path(os.environ.get("DBT_TARGET_PATH") or s.dbt_project_dir / "target")
    results_file = target / "run_results.json"
    nodes = _node_results(results_file) if results_file.exists() else {}
    log.info("dbt build:\n%s", done.stdout[-4000:])
    failed = {n: r for n, r in nodes.items() if r["status"] not in ("success", "pass")}
    if done.returncode != 0 or failed:
        raise StepFailed(
            f"dbt build failed ({len(failed)} nodes): "
            + "; ".join(f"{n}: {r['status']} {r['message']}" for n, r in sorted(failed.items()))
            + f"\n{done.stdout[-2000:]}"
        )
    return {"nodes": len(nodes), "results": nodes}


def _node_results(path: Path) -> dict[str, dict[str, Any]]:
    results = json.loads(path.read_text())["results"]
    return {
        r["unique_id"]: {
            "status": r["status"],
            "seconds": round(float(r.get("execution_time") or 0.0), 3),
            "message": (r.get("message") or "")[:200],
        }
        for r in results
    }


def quality_gate(s: WarehouseSettings, docs_dir: Path) -> dict[str, Any]:
    """Great Expectations on raw and marts (``central quality run``). A failure raises with the
    failing expectations and the Data Docs page."""
    from central.warehouse.quality import run_quality

    outcome = run_quality(s, docs_dir=docs_dir)
    docs = str(outcome.docs_index) if outcome.docs_index else str(docs_dir)
    if not outcome.success:
        reasons = "; ".join(
            f"{f.suite}: {f.expectation} {f.column} ({f.reason})" for f in outcome.failures[:10]
        )
        raise StepFailed(f"quality gate failed: {reasons}. Data Docs: file://{docs}")
    return {"suites": outcome.suites_run, "data_docs": docs}


def mart_rows(s: WarehouseSettings) -> dict[str, int]:
    """Rows per mart table (``count()``: ``system.tables.total_rows`` still counts rows an
    incremental model deleted until their part is merged)."""
    with served(s.clickhouse_dsn) as url:
        client = connect(url)
        try:
            names = client.query(
                "select name from system.tables where database = {db:String} "
                "and name like 'mart_%' order by name",
                parameters={"db": MART_SCHEMA},
            ).result_rows
            return {
                str(name): int(
                    client.query(f"select count() from `{MART_SCHEMA}`.`{name}`").result_rows[0][0]
                )
                for (name,) in names
            }
        finally:
            client.close()
