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
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from central.warehouse.client import connect, served
from central.warehouse.dbt import run_dbt
from central.warehouse.settings import WarehouseSettings, get_settings

log = logging.getLogger(__name__)


class StepFailed(RuntimeError):
    """A step that must stop the run (the DAG's task fails with this message)."""


#: dbt statuses of a node that did its job (a model built, a test passed or only warned).
NODE_OK = frozenset({"success", "pass", "warn"})


def settings(**overrides: Any) -> WarehouseSettings:
    return get_settings(**overrides)


def dbt_vars(s: WarehouseSettings) -> dict[str, str]:
    """The dbt vars of an orchestrated build: the marts go to the build database."""
    return {"marts_schema": s.marts_build_schema}


def reload_window(
    start: datetime | None, end: datetime | None, now: datetime, period: timedelta
) -> tuple[datetime, datetime] | None:
    """The arrival window a run reloads: its data interval when that ended more than two
    periods before ``now`` (a backfill, or an old run cleared to run again), else None (a
    current run loads what is new since the watermark). A manual run at a past date has an
    empty interval: it reloads the period before that date."""
    if start is None or end is None or end > now - 2 * period:
        return None
    return min(start, end - period), end


def load_warehouse(
    s: WarehouseSettings, window: tuple[datetime, datetime] | None = None
) -> dict[str, int]:
    """PostgreSQL raw → ClickHouse raw (``central warehouse load``): what is new since the
    watermark, or with ``window`` what arrived in that window again (idempotent: the warehouse
    collapses rows loaded twice, and the incremental models recompute what they touch). Rows
    loaded per table."""
    from central.warehouse.loader import load

    with served(s.clickhouse_dsn) as url:
        loads = load(s.model_copy(update={"clickhouse_dsn": url}), window=window)
    return {t.table: t.rows for t in loads}


def build_marts(s: WarehouseSettings, target_path: Path) -> dict[str, Any]:
    """``dbt build`` into the build database, in one dbt process: every model, its data tests
    and the unit tests (what the DAG's Cosmos task runs, without Airflow). Returns each node's
    status and time."""
    done = run_dbt(
        s,
        ["build", "--vars", json.dumps(dbt_vars(s))],
        capture=True,
        extra_env={"DBT_TARGET_PATH": str(target_path)},
    )
    results_file = target_path / "run_results.json"
    nodes = node_results(results_file) if results_file.exists() else []
    log.info("dbt build:\n%s", done.stdout[-4000:])
    failed = [n for n in nodes if n["status"] not in NODE_OK]
    if done.returncode != 0 or failed:
        raise StepFailed(
            f"dbt build failed ({len(failed)} nodes): "
            + "; ".join(f"{n['name']}: {n['status']} {n['message']}" for n in failed)
            + f"\n{done.stdout[-2000:]}"
        )
    return {"nodes": len(nodes), "results": nodes}


def node_results(path: Path, manifest: Path | None = None) -> list[dict[str, Any]]:
    """One entry per dbt node of a ``run_results.json``: its id, kind, name, status, seconds and
    message (a failing test's message says how many rows failed); with dbt's ``manifest.json``,
    also ``model``: the model (or source) the node checks, as ``"<kind> <name>"`` (a model is
    its own)."""
    results = json.loads(path.read_text())["results"]
    owners = _owners(manifest) if manifest else {}
    nodes = []
    for r in results:
        uid = str(r["unique_id"])
        kind, name = _kind_name(uid)
        nodes.append(
            {
                "id": uid,
                "kind": kind,
                "name": name,
                "status": r["status"],
                "seconds": round(float(r.get("execution_time") or 0.0), 3),
                "message": (r.get("message") or "")[:300],
                "model": " ".join(_kind_name(owners.get(uid, uid))),
            }
        )
    return nodes


def _kind_name(unique_id: str) -> tuple[str, str]:
    """("test", "not_null_x_id") of "test.eiot.not_null_x_id.2d05fea695": the kind and the name
    without the project (and without a test's hash)."""
    kind, _, rest = unique_id.partition(".")
    name = rest.split(".", 1)[-1]
    if kind == "test":
        name = name.rsplit(".", 1)[0]
    return kind, name


def _owners(path: Path) -> dict[str, str]:
    """Test or unit test id → the id of the model (or source) it checks, from dbt's manifest:
    the node a generic test is attached to, else the first model it depends on (as dbt lists
    them), else its first dependency (a source). Empty when the manifest cannot be read (each
    node then stands alone)."""
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("no model for each test: %s unreadable (%s)", path, exc)
        return {}
    owners = {}
    tests = {k: v for k, v in manifest.get("nodes", {}).items() if k.startswith("test.")}
    for uid, node in {**tests, **manifest.get("unit_tests", {})}.items():
        deps = node.get("depends_on", {}).get("nodes", [])
        models = [d for d in deps if d.startswith("model.")]
        owner = node.get("attached_node") or next(iter(models or deps), None)
        if owner:
            owners[uid] = owner
    return owners


def per_model(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The per-model view of a build: one entry per model (or source) with its data tests and
    unit tests, in the order dbt ran them. Its status is ``failed`` when the model or one of
    its tests failed (the message names each), ``skipped`` when dbt skipped them all (an
    upstream model failed), else ``success``."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for n in nodes:
        groups.setdefault(n["model"], []).append(n)
    view = []
    for name, members in groups.items():
        failing = [n for n in members if n["status"] not in NODE_OK | {"skipped"}]
        skipped = all(n["status"] == "skipped" for n in members)
        view.append(
            {
                "name": name,
                "status": "failed" if failing else "skipped" if skipped else "success",
                "seconds": round(sum(n["seconds"] for n in members), 3),
                "message": "; ".join(
                    f"{n['kind']} {n['name']}: {n['status']} {n['message']}".strip()
                    for n in failing
                )[:1000],
                "nodes": [
                    {k: n[k] for k in ("kind", "name", "status", "seconds")} for n in members
                ],
            }
        )
    return view


def quality_gate(s: WarehouseSettings, docs_dir: Path) -> dict[str, Any]:
    """Great Expectations on raw and on the marts in the build database (``central quality
    run``). A failure raises with the failing expectations and the Data Docs page."""
    from central.warehouse.quality import run_quality

    outcome = run_quality(s, docs_dir=docs_dir, marts_schema=s.marts_build_schema)
    docs = str(outcome.docs_index) if outcome.docs_index else str(docs_dir)
    if not outcome.success:
        reasons = "; ".join(
            f"{f.suite}: {f.expectation} {f.column} ({f.reason})" for f in outcome.failures[:10]
        )
        raise StepFailed(
            f"quality gate failed, the marts readers use are kept as they were: {reasons}. "
            f"Data Docs: file://{docs}"
        )
    return {"suites": outcome.suites_run, "data_docs": docs}


def publish(s: WarehouseSettings) -> dict[str, int]:
    """The checked marts (build database) replace the served ones; rows per published table."""
    from central.warehouse.publish import publish_marts

    with served(s.clickhouse_dsn) as url:
        client = connect(url)
        try:
            return publish_marts(client, s.marts_build_schema, s.marts_schema)
        finally:
            client.close()


def mart_rows(s: WarehouseSettings, schema: str | None = None) -> dict[str, int]:
    """Rows per mart table of ``schema`` (default: the served marts). ``count()``:
    ``system.tables.total_rows`` still counts rows an incremental model deleted until their
    part is merged."""
    db = schema or s.marts_schema
    with served(s.clickhouse_dsn) as url:
        client = connect(url)
        try:
            names = client.query(
                "select name from system.tables where database = {db:String} "
                "and name like 'mart\\_%' order by name",
                parameters={"db": db},
            ).result_rows
            return {
                str(name): int(
                    client.query(f"select count() from `{db}`.`{name}`").result_rows[0][0]
                )
                for (name,) in names
            }
        finally:
            client.close()
