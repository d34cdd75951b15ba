"""The Airflow DAGs (central/orchestration/dags) under a real Airflow 3 (its own virtualenv,
.venv-airflow, made by `make test`): the folder imports with no error, documented, without
touching the network while parsing; `warehouse_refresh` run with `dag.test()` against a real
PostgreSQL and an embedded warehouse builds the marts and emits the `marts` asset; a second run
with no new data changes nothing; a failing quality gate fails the run and emits nothing; under
the real scheduler (`make airflow`'s standalone), a backfill of a past range reloads what the
warehouse lost and, run again with both runs at once, doubles nothing, the runs holding the
warehouse one after the other."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pydantic import ValidationError
from selenium.webdriver.common.by import By
from selenium.webdriver.support.wait import WebDriverWait

from central.local_services import free_port
from central.orchestration import steps
from central.warehouse.client import connect, spawn_owner, stop_owner
from simulator.raw_db import scratch_database, write_warehouse_fleet
from tests.support.browser import chromium, screenshot_path
from tests.support.processes import REPO, wait_until
from tests.support.warehouse import marts_fleet

pytestmark = pytest.mark.services

AIRFLOW_PYTHON = REPO / ".venv-airflow" / "bin" / "python"
DAGS = REPO / "central" / "orchestration" / "dags"
DRIVER = REPO / "tests" / "airflow" / "run_dag.py"


class Airflow:
    """A private Airflow home (SQLite metadata unless told otherwise) and the environment its
    tasks read."""

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

    def cli(self, *args: str, retry_while: str = "", timeout: float = 120) -> str:
        """``airflow ARGS``; its stdout. With ``retry_while``: run again (for up to ``timeout``
        seconds) while it fails with that in its output."""
        deadline = time.monotonic() + timeout
        while True:
            done = subprocess.run(
                [str(AIRFLOW_PYTHON.parent / "airflow"), *args],
                capture_output=True,
                text=True,
                timeout=300,
                env=self.env,
                cwd=REPO,
            )
            output = done.stdout[-3000:] + done.stderr[-3000:]
            if done.returncode == 0 or not retry_while or retry_while not in output:
                break
            assert time.monotonic() < deadline, output
            time.sleep(5)
        assert done.returncode == 0, output
        return done.stdout


def test_the_dag_folder_imports_documented_without_network(tmp_path: Path) -> None:
    found = Airflow(tmp_path / "airflow", {}).run(str(DRIVER), "parse", str(DAGS))
    assert found["import_errors"] == {}
    assert "warehouse_refresh" in found["dag_ids"]
    assert all(found["documented"].values()), found["documented"]
    print(f"DAG folder parsed in {found['parse_s']} s")

    # A bad setting does not make warehouse_refresh vanish as an import error: it parses, and
    # its first step (hold_warehouse: holding.acquire reads the settings) fails naming it.
    bad = {"EIOT_LEASE_TTL_S": "5"}
    found = Airflow(tmp_path / "bad", bad).run(str(DRIVER), "parse", str(DAGS))
    assert found["import_errors"] == {} and "warehouse_refresh" in found["dag_ids"]
    with pytest.MonkeyPatch.context() as env:
        env.setenv("EIOT_LEASE_TTL_S", bad["EIOT_LEASE_TTL_S"])
        with pytest.raises(ValidationError, match="lease_ttl_s"):
            steps.settings()


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
    # Each task's XCom is its return value; the only other keys are the build's nodes and the
    # lease generation each warehouse step ran under (a dict return value is not also split
    # into one row per key).
    steps = ("load", "dbt_build", "quality_gate", "publish")
    assert {k for k in first["xcom"] if ":" in k} == {"dbt_build:nodes"} | {
        f"{t}:lease_generation" for t in steps
    }, list(first["xcom"])
    loaded = first["xcom"]["load"]["rows"]
    with psycopg.connect(fleet_dsn) as pg:
        (readings,) = pg.execute("select count(*) from raw.readings").fetchone()  # type: ignore[misc]
    assert loaded["readings"] == readings
    nodes = first["xcom"]["dbt_build:nodes"]
    assert {n["kind"] for n in nodes} >= {"model", "test", "unit_test"}, "the unit tests ran"
    assert {n["status"] for n in nodes} <= {"success", "pass"}
    # One task instance per model (and per source with tests), named by it: the per-model view
    # of the grid, each model's data and unit tests folded into its instance.
    per_model = {k: v for k, v in first["tasks"].items() if k.startswith("dbt_model[")}
    models = {n["model"] for n in nodes}
    assert {f"model {n['name']}" for n in nodes if n["kind"] == "model"} <= models
    assert len(per_model) == len(models) < len(nodes), per_model
    assert set(per_model.values()) == {"success"}, per_model
    assert "dbt_model[model mart_energy_balance]" in per_model
    checked = [n for n in nodes if n["model"] == "model mart_energy_balance"]
    assert {n["kind"] for n in checked} == {"model", "test", "unit_test"}, checked
    marts = first["xcom"]["publish"]
    assert marts["mart_consumption_metrics"] > 0 and marts["mart_energy_balance"] > 0, marts
    # The run held the warehouse from its load to its publication, and released it.
    assert first["xcom"]["hold_warehouse"] == 1 and first["xcom"]["release_warehouse"] is True
    assert warehouse_lease(fleet_dsn) == (1, None)
    print(f"warehouse_refresh: {first['seconds']} s, marts {marts}")
    shot = grid_screenshot(airflow, "warehouse_refresh", first["run_id"], tmp_path / "api.log")
    print(f"grid view of the run: {shot}")

    # Nothing new in PostgreSQL. The loader reads the last load_overlap_s (5 min) again, which
    # the warehouse collapses (ReplacingMergeTree): the marts come out the same.
    # Another run holds the warehouse for 30 s more: this one waits for it, then holds it.
    with psycopg.connect(fleet_dsn, autocommit=True) as pg:
        (freed_at,) = pg.execute(  # type: ignore[misc]
            "update ops.leases set holder = 'warehouse_refresh/other', generation = 7, "
            "acquired_at = now(), expires_at = now() + interval '30 seconds' "
            "returning expires_at"
        ).fetchone()
    second = airflow.run(*run_dag)
    assert second["state"] == "success"
    assert second["xcom"]["publish"] == marts
    assert second["xcom"]["hold_warehouse"] == 8
    assert datetime.fromisoformat(second["started"]["load"]) >= freed_at, "it did not wait"
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

    # A reading PostgreSQL's constraints would refuse reaches the warehouse (a 60 s interval,
    # at a time PostgreSQL has no reading for, so no reload replaces it):
    # dbt's range test on stg_readings fails, so that model's instance fails naming the test,
    # dbt skips what is built on it, and neither the gate nor the publication runs.
    client = connect(f"chdb://{tmp_path / 'warehouse'}")
    try:
        client.command(
            "insert into raw.readings select * replace (60 as interval_s, "
            "ts + interval 60 day as ts, now64(3) as loaded_at) from raw.readings final limit 1"
        )
    finally:
        client.close()
    fourth = airflow.run(*run_dag)
    tasks = fourth["tasks"]
    assert tasks["dbt_build"] == "failed", tasks
    assert tasks["dbt_model[model stg_readings]"] == "failed", tasks
    assert tasks["dbt_model[model mart_energy_balance]"] == "skipped", tasks
    assert tasks["dbt_model[model stg_meters]"] == "success", tasks
    assert tasks["quality_gate"] == "upstream_failed" and fourth["events"] == [], tasks
    view = {m["name"]: m for m in fourth["xcom"]["dbt_models"]}
    assert "accepted_range_stg_readings_interval_s" in view["model stg_readings"]["message"]
    assert balance_rows(tmp_path / "warehouse") == served_before
    # The failed runs released the warehouse too (the release is a teardown).
    assert tasks["release_warehouse"] == "success"
    assert warehouse_lease(fleet_dsn) == (10, None)


def warehouse_lease(dsn: str) -> tuple[int, str | None]:
    """The warehouse lease's generation and holder."""
    with psycopg.connect(dsn) as pg:
        row = pg.execute(
            "select generation, holder from ops.leases where name = 'warehouse'"
        ).fetchone()
    assert row is not None, "no run took the warehouse lease"
    return int(row[0]), row[1]


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


# Five runs, each ~35 task processes on two cores. The timeout guards against a hang, not a
# speed: on a slow day the machine takes twice as long as usual.
@pytest.mark.timeout(1800)
def test_the_scheduler_runs_a_backfill_of_a_date_range_and_again_without_doubling(
    tmp_path: Path,
) -> None:
    """`make airflow`'s Airflow (standalone: scheduler, dag-processor, api-server, its metadata
    in PostgreSQL) runs `warehouse_refresh` once (triggered), then `airflow backfill create` over
    a past range: the scheduler runs one run per 15-minute interval, the lost arrivals of those
    intervals come back; the same backfill again (reprocessing completed runs) doubles
    nothing and leaves the marts as they were."""
    warehouse = tmp_path / "warehouse"
    with (
        scratch_database("af_sched") as dsn,
        scratch_database("af_meta", schema=False) as meta,
        standalone_airflow(tmp_path, dsn, meta) as airflow,
    ):
        first_ts = write_arrived_fleet(dsn)
        # the scheduler makes no runs of its own here (one every 15 minutes would overlap the
        # backfill's): one manual run loads it all
        airflow.cli("dags", "unpause", "warehouse_refresh")
        airflow.cli("dags", "trigger", "warehouse_refresh")
        first = wait_for_runs(airflow, "manual__", 1)
        assert [r["state"] for r in first] == ["success"], first
        complete = balance_rows(warehouse)

        # two intervals on a past morning: the runs at 06:00 and 06:15 reload 05:45-06:15
        past = (first_ts.astimezone(UTC) + timedelta(days=3)).replace(
            hour=6, minute=0, second=0, microsecond=0
        )
        lost = (past - PERIOD, past + PERIOD)
        lose_arrivals(warehouse, *lost)
        arrived = arrivals(dsn, *lost)
        assert arrived > 0 and warehouse_readings(warehouse, *lost) == 0

        def backfill(max_active_runs: int) -> list[str]:
            return [
                "backfill", "create", "--dag-id", "warehouse_refresh",
                "--max-active-runs", str(max_active_runs),
                "--from-date", past.isoformat(), "--to-date", (past + PERIOD).isoformat(),
            ]  # fmt: skip

        airflow.cli(*backfill(1))
        runs = wait_for_runs(airflow, "backfill__", 2)
        assert [r["state"] for r in runs] == ["success"] * 2, runs
        assert sorted(r["logical_date"] for r in runs) == [
            past.isoformat(),
            (past + PERIOD).isoformat(),
        ]
        assert warehouse_readings(warehouse, *lost) == arrived
        assert same_balance(balance_rows(warehouse), complete), "the marts are whole again"

        # one backfill per DAG at a time: the scheduler marks the first one complete within 30 s
        running = "There can be only one running backfill"
        # both runs at once this time: a backfill's max_active_runs overrides the DAG's, and
        # the warehouse lease makes one run wait for the other's publication
        airflow.cli(*backfill(2), "--reprocess-behavior", "completed", retry_while=running)
        again = wait_for_runs(airflow, "backfill__", 2, after=runs)
        assert [r["state"] for r in again] == ["success"] * 2, again
        assert warehouse_readings(warehouse, *lost) == arrived, "nothing doubled"
        assert same_balance(balance_rows(warehouse), complete)
        # the two runs were under way together, and took turns in the warehouse
        at = datetime.fromisoformat
        (a, b) = [(at(r["start_date"]), at(r["end_date"])) for r in again]
        assert a[0] < b[1] and b[0] < a[1], f"the runs did not overlap: {again}"
        held = warehouse_spans(meta, [r["run_id"] for r in again])
        for (run_a, a), (run_b, b) in itertools.combinations(held.items(), 2):
            assert a[1] <= b[0] or b[1] <= a[0], f"{run_a} {a} overlaps {run_b} {b}"


PERIOD = timedelta(minutes=15)  # warehouse_refresh's schedule


def same_balance(rows: list[tuple[Any, ...]], expected: list[tuple[Any, ...]]) -> bool:
    """The same (day, asset) rows with the same energy, but for the order of a float sum."""
    got = {(day, asset): kwh for day, asset, kwh in rows}
    return got.keys() == {(d, a) for d, a, _ in expected} and all(
        got[(d, a)] == pytest.approx(kwh, rel=1e-9) for d, a, kwh in expected
    )


@contextlib.contextmanager
def standalone_airflow(tmp_path: Path, pg_dsn: str, metadata_dsn: str) -> Iterator[Airflow]:
    """``make airflow`` (central.orchestration.launch) on a free port over ``pg_dsn`` and an
    embedded warehouse in ``tmp_path / "warehouse"``, its metadata in ``metadata_dsn``; the
    warehouse has one owner for the block, so that concurrent tasks share its engine."""
    port = free_port()
    home = tmp_path / "airflow"
    airflow = Airflow(
        home,
        {
            "EIOT_PG_DSN": pg_dsn,
            "EIOT_CLICKHOUSE_DSN": f"chdb://{tmp_path / 'warehouse'}",
            "DBT_TARGET_PATH": str(tmp_path / "dbt-target"),
            "DBT_LOG_PATH": str(tmp_path / "dbt-logs"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_dsn.replace(
                "postgresql://", "postgresql+psycopg://", 1
            ),
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        },
    )
    log = tmp_path / "standalone.log"
    owner, _ = spawn_owner(tmp_path / "warehouse")
    with log.open("wb") as out:
        server = subprocess.Popen(
            [str(AIRFLOW_PYTHON), "-m", "central.orchestration.launch"]
            + ["--home", str(home), "--port", str(port)],
            env=airflow.env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}/api/v2/monitor/health"

        def healthy() -> bool:
            assert server.poll() is None, log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    health = json.load(r)
            except OSError:
                return False
            return all(
                health.get(part, {}).get("status") == "healthy"
                for part in ("metadatabase", "scheduler", "dag_processor")
            )

        wait_until(healthy, 180, "Airflow standalone", every=1)
        yield airflow
    except BaseException:
        print(log.read_text()[-8000:])
        raise
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        stop_owner(owner)


def wait_for_runs(
    airflow: Airflow,
    prefix: str,
    n: int,
    after: list[dict[str, Any]] | None = None,
    timeout: float = 600,
) -> list[dict[str, Any]]:
    """The ``n`` runs whose id starts with ``prefix`` (and that started after the runs
    ``after``) once all have finished, oldest logical date first; more than ``n`` fails."""
    since = max((r["end_date"] for r in after or []), default="")
    found: list[dict[str, Any]] = []

    def finished() -> bool:
        nonlocal found
        runs = [
            r
            # the JSON is the last line (Airflow prints its warnings on stdout too)
            for r in json.loads(
                airflow.cli("dags", "list-runs", "warehouse_refresh", "-o", "json").splitlines()[-1]
            )
            if r["run_id"].startswith(prefix) and r["start_date"] > since
        ]
        found = sorted(runs, key=lambda r: r["logical_date"])
        return len(found) >= n and all(r["state"] in ("success", "failed") for r in found)

    wait_until(finished, timeout, f"{n} {prefix} runs of warehouse_refresh", every=5)
    assert len(found) == n, found  # no other run slipped in
    return found


def warehouse_spans(metadata_dsn: str, run_ids: list[str]) -> dict[str, tuple[datetime, datetime]]:
    """Per run, from its load's start to its publication's end (Airflow's task instances)."""
    with psycopg.connect(metadata_dsn) as pg:
        rows = pg.execute(
            "select run_id, min(start_date), max(end_date) from task_instance "
            "where dag_id = 'warehouse_refresh' and run_id = any(%s) "
            "and task_id in ('load', 'publish') group by run_id",
            (run_ids,),
        ).fetchall()
    spans = {str(run): (start, end) for run, start, end in rows}
    assert spans.keys() == set(run_ids), spans
    return spans


def write_arrived_fleet(dsn: str) -> datetime:
    """The marts fleet in ``dsn``, its readings arrived a few minutes after they were taken (as
    through a gateway) and the last two days just now (the freshness check looks at the
    newest); the first reading's time."""
    with psycopg.connect(dsn, autocommit=True) as pg:
        write_warehouse_fleet(pg, marts_fleet())
        pg.execute(
            "update raw.readings set received_at = ts + interval '4 minutes' "
            "where ts < (select max(ts) - interval '2 days' from raw.readings)"
        )
        (first_ts,) = pg.execute("select min(ts) from raw.readings").fetchone()  # type: ignore[misc]
    return first_ts  # type: ignore[no-any-return]


def lose_arrivals(warehouse: Path, start: datetime, end: datetime) -> None:
    """The warehouse loses the readings that arrived in [start, end) (a load that went wrong)."""
    client = connect(f"chdb://{warehouse}")
    try:
        client.command(
            "delete from raw.readings where received_at >= {a:DateTime64(3)} "
            "and received_at < {b:DateTime64(3)}",
            parameters={"a": start, "b": end},
        )
    finally:
        client.close()


def arrivals(dsn: str, start: datetime, end: datetime) -> int:
    """Readings PostgreSQL received in [start, end)."""
    with psycopg.connect(dsn) as pg:
        (n,) = pg.execute(  # type: ignore[misc]
            "select count(*) from raw.readings where received_at >= %s and received_at < %s",
            (start, end),
        ).fetchone()
    return int(n)


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
