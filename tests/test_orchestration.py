"""The Airflow DAGs (central/orchestration/dags) under a real Airflow 3 (its own virtualenv,
.venv-airflow, made by `make test`): the folder imports with no error, documented, without
touching the network while parsing; `warehouse_refresh` run with `dag.test()` against a real
PostgreSQL and an embedded warehouse builds the marts and emits the `marts` asset; a second run
with no new data changes nothing; a failing quality gate fails the run and emits nothing."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.wait import WebDriverWait

from central.local_services import free_port
from central.warehouse.client import connect
from simulator.raw_db import scratch_database, write_warehouse_fleet
from tests.support.browser import chromium, screenshot_path
from tests.support.processes import REPO, wait_until
from tests.support.warehouse import marts_fleet

pytestmark = pytest.mark.services

AIRFLOW_PYTHON = REPO / ".venv-airflow" / "bin" / "python"
DAGS = REPO / "central" / "orchestration" / "dags"
DRIVER = REPO / "tests" / "airflow" / "run_dag.py"


class Airflow:
    """A private Airflow home (SQLite metadata) and the environment its tasks read."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        if not AIRFLOW_PYTHON.exists():
            pytest.fail("no .venv-airflow: `make test` (or `make airflow-venv`) makes it")
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("EIOT_", "AIRFLOW"))},
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
            "AIRFLOW__COSMOS__ENABLE_TELEMETRY": "False",
            **env,
        }

    def run(self, *args: str, timeout: float = 600) -> dict[str, Any]:
        done = subprocess.run(
            [str(AIRFLOW_PYTHON), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
            cwd=REPO,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        if result.get("state") != "success":  # the task logs, shown when the test fails
            print(done.stdout)
        return result

    def cli(self, *args: str) -> None:
        done = subprocess.run(
            [str(AIRFLOW_PYTHON.parent / "airflow"), *args],
            capture_output=True,
            text=True,
            timeout=300,
            env=self.env,
            cwd=REPO,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_the_dag_folder_imports_documented_without_network(tmp_path: Path) -> None:
    found = Airflow(tmp_path / "airflow", {}).run(str(DRIVER), "parse", str(DAGS))
    assert found["import_errors"] == {}
    assert "warehouse_refresh" in found["dag_ids"]
    assert all(found["documented"].values()), found["documented"]
    print(f"DAG folder parsed in {found['parse_s']} s")


def refresh_airflow(tmp_path: Path, pg_dsn: str) -> Airflow:
    """A private Airflow, ready to run the DAGs over ``pg_dsn`` and an embedded warehouse in
    ``tmp_path / "warehouse"``."""
    airflow = Airflow(
        tmp_path / "airflow",
        {
            "EIOT_PG_DSN": pg_dsn,
            "EIOT_CLICKHOUSE_DSN": f"chdb://{tmp_path / 'warehouse'}",
            "DBT_TARGET_PATH": str(tmp_path / "dbt-target"),
            "DBT_LOG_PATH": str(tmp_path / "dbt-logs"),
        },
    )
    airflow.cli("db", "migrate")
    airflow.cli("dags", "reserialize")
    return airflow


@pytest.fixture(scope="module")
def fleet_dsn() -> Iterator[str]:
    fleet = marts_fleet()
    with scratch_database("af_test") as dsn:
        with psycopg.connect(dsn, autocommit=True) as pg:
            write_warehouse_fleet(pg, fleet)
        yield dsn


def test_warehouse_refresh_builds_the_marts_emits_the_asset_and_gates(
    tmp_path: Path, fleet_dsn: str
) -> None:
    airflow = refresh_airflow(tmp_path, fleet_dsn)
    run_dag = [str(DRIVER), "test", str(DAGS), "warehouse_refresh"]

    first = airflow.run(*run_dag)
    assert first["state"] == "success", first["tasks"]
    assert [e["uri"] for e in first["events"]] == ["eiot://warehouse/marts"], first
    loaded = first["xcom"]["load"]["rows"]
    with psycopg.connect(fleet_dsn) as pg:
        (readings,) = pg.execute("select count(*) from raw.readings").fetchone()  # type: ignore[misc]
    assert loaded["readings"] == readings
    nodes = first["xcom"]["dbt_build:nodes"]
    assert {n["kind"] for n in nodes} >= {"model", "test", "unit_test"}, "the unit tests ran"
    assert {n["status"] for n in nodes} <= {"success", "pass"}
    # One task instance per dbt node, named by the node: the per-model view of the grid.
    per_node = {k: v for k, v in first["tasks"].items() if k.startswith("dbt_node[")}
    assert len(per_node) == len(nodes) and set(per_node.values()) == {"success"}, per_node
    assert "dbt_node[model mart_energy_balance]" in per_node
    marts = first["xcom"]["publish"]
    assert marts["mart_consumption_metrics"] > 0 and marts["mart_energy_balance"] > 0, marts
    print(f"warehouse_refresh: {first['seconds']} s, marts {marts}")
    shot = grid_screenshot(airflow, "warehouse_refresh", first["run_id"], tmp_path / "api.log")
    print(f"grid view of the run: {shot}")

    # Nothing new in PostgreSQL. The loader reads the last load_overlap_s (5 min) again, which
    # the warehouse collapses (ReplacingMergeTree): the marts come out the same.
    second = airflow.run(*run_dag)
    assert second["state"] == "success"
    assert second["xcom"]["publish"] == marts
    served_before = balance_rows(tmp_path / "warehouse")

    with psycopg.connect(fleet_dsn, autocommit=True) as pg:  # a new day of readings, 999 V
        pg.execute(
            "insert into raw.readings (meter_id, ts, interval_s, kwh, voltage_v, gateway_id, "
            "batch_id) select meter_id, max(ts) + interval '1 day', 1800, 0.1, 999, "
            "'GW-X', 'bad' from raw.readings group by meter_id"
        )
    third = airflow.run(*run_dag)
    assert third["state"] == "failed" and third["tasks"]["quality_gate"] == "failed", third
    assert third["tasks"]["publish"] == "upstream_failed"
    assert third["events"] == [], "a failed gate must not update the marts asset"
    # The build database has the new day; the served marts are still yesterday's.
    assert balance_rows(tmp_path / "warehouse", "marts_build") != served_before
    assert balance_rows(tmp_path / "warehouse") == served_before


def balance_rows(warehouse: Path, schema: str = "marts") -> list[tuple[Any, ...]]:
    client = connect(f"chdb://{warehouse}")
    try:
        return list(
            client.query(
                f"select balance_date, asset_id, supplied_kwh from {schema}.mart_energy_balance "
                "order by balance_date, asset_id"
            ).result_rows
        )
    finally:
        client.close()


def test_a_backfill_reloads_its_window_and_running_it_again_changes_nothing(
    tmp_path: Path,
) -> None:
    """Rows that arrived in a past interval but are missing from the warehouse (a load that
    went wrong) come back when that interval is run again, as `airflow backfill` runs it; a
    second run of the same interval changes nothing."""
    warehouse = tmp_path / "warehouse"
    with scratch_database("af_backfill") as dsn:
        with psycopg.connect(dsn, autocommit=True) as pg:
            write_warehouse_fleet(pg, marts_fleet())
            # readings arrived a few minutes after they were taken (as through a gateway); the
            # last two days arrived just now (the freshness check looks at the newest)
            pg.execute(
                "update raw.readings set received_at = ts + interval '4 minutes' "
                "where ts < (select max(ts) - interval '2 days' from raw.readings)"
            )
            (first_ts,) = pg.execute("select min(ts) from raw.readings").fetchone()  # type: ignore[misc]
        airflow = refresh_airflow(tmp_path, dsn)
        run_dag = [str(DRIVER), "test", str(DAGS), "warehouse_refresh"]
        first = airflow.run(*run_dag)
        failed = {k: v for k, v in first["tasks"].items() if v != "success"}
        assert first["state"] == "success", failed
        complete = balance_rows(warehouse)

        past = (first_ts + timedelta(days=3)).replace(hour=6, minute=10, second=0, microsecond=0)
        client = connect(f"chdb://{warehouse}")
        try:  # the warehouse lost what arrived that morning
            client.command(
                "delete from raw.readings where received_at >= {a:DateTime64(3)} "
                "and received_at < {b:DateTime64(3)}",
                parameters={"a": past - timedelta(hours=1), "b": past + timedelta(hours=1)},
            )
        finally:
            client.close()

        backfill = airflow.run(*run_dag, past.isoformat())
        assert backfill["state"] == "success", backfill["tasks"]
        start, end = (datetime.fromisoformat(t) for t in backfill["xcom"]["load"]["window"])
        assert past - timedelta(hours=1) <= start < end <= past + timedelta(hours=1)
        with psycopg.connect(dsn) as pg:
            (arrived,) = pg.execute(  # type: ignore[misc]
                "select count(*) from raw.readings where received_at >= %s and received_at < %s",
                (start, end),
            ).fetchone()
        assert arrived > 0
        assert backfill["xcom"]["load"]["rows"]["readings"] == arrived, "only its own window"
        assert warehouse_readings(warehouse, start, end) == arrived

        again = airflow.run(*run_dag, past.isoformat())
        assert again["state"] == "success"
        assert warehouse_readings(warehouse, start, end) == arrived, "nothing doubled"
        assert again["xcom"]["publish"] == backfill["xcom"]["publish"]
        # the marts outside the lost hours are as the complete load made them
        lost = {str(d) for d in (past.date(),)}
        assert [r for r in balance_rows(warehouse) if str(r[0]) not in lost] == [
            r for r in complete if str(r[0]) not in lost
        ]


def warehouse_readings(warehouse: Path, start: datetime, end: datetime) -> int:
    client = connect(f"chdb://{warehouse}")
    try:
        return int(
            client.query(
                "select count() from raw.readings final where received_at >= {a:DateTime64(3)} "
                "and received_at < {b:DateTime64(3)}",
                parameters={"a": start, "b": end},
            ).result_rows[0][0]
        )
    finally:
        client.close()


def grid_screenshot(airflow: Airflow, dag_id: str, run_id: str, log: Path) -> Path:
    """The Airflow UI (a real api-server on this home) shows the run's grid in a real headless
    Chromium: every task of the DAG is on the page; the screenshot is saved."""
    port = free_port()
    env = {**airflow.env, "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True"}
    with log.open("wb") as out:
        server = subprocess.Popen(
            [
                str(AIRFLOW_PYTHON.parent / "airflow"),
                "api-server",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        base = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"{base}/api/v2/monitor/health", timeout=2) as r:
                    return bool(r.status == 200)
            except OSError:
                assert server.poll() is None, log.read_text()[-3000:]
                return False

        wait_until(healthy, 120, "the Airflow api-server")
        path = screenshot_path(f"airflow_grid_{dag_id}")
        with chromium() as browser:
            browser.get(f"{base}/dags/{dag_id}/runs/{run_id}")
            for task in ("load", "dbt_build", "quality_gate", "publish"):
                WebDriverWait(browser, 90).until(
                    lambda b, t=task: t in b.find_element(By.TAG_NAME, "body").text,
                    f"{task} not shown in the grid",
                )
            time.sleep(2)  # let the grid's cells finish colouring
            assert browser.save_screenshot(str(path))
        assert path.stat().st_size > 10_000
        return path
    finally:
        server.terminate()
        server.wait(30)
