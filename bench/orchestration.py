"""Orchestration benchmark: ``python -m bench.orchestration --meters 10000 --days 30``.

Writes a synthetic fleet to a throwaway PostgreSQL database (as ``bench.warehouse``), then
refreshes two fresh embedded warehouses from it, the same steps either way:

* ``manual_s``: the steps run directly, one after the other (``central/orchestration/steps.py``:
  load, one ``dbt build``, the quality gate, publish), as an operator would run the commands;
* ``dag_s``: ``warehouse_refresh`` through Airflow (``dag.test()`` under ``.venv-airflow``, the
  driver ``tests/airflow/run_dag.py``), including its per-model tasks;
* ``dag_parse_s``: the time to import the DAG folder (DagBag);
* ``marts_rows``: rows in the marts the DAG published (and the same figure for the manual run,
  which must match).

The last line printed is one JSON object with those figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from bench.results import REPO, report
from simulator.raw_db import scratch_database, write_warehouse_fleet
from simulator.warehouse_fleet import WarehouseFleet

AIRFLOW_BIN = REPO / ".venv-airflow" / "bin"
DAGS = REPO / "central" / "orchestration" / "dags"
DRIVER = REPO / "tests" / "airflow" / "run_dag.py"


def _manual(pg_dsn: str, work: Path) -> tuple[float, int]:
    from central.orchestration import steps

    s = steps.settings(clickhouse_dsn=f"chdb://{work / 'manual'}", pg_dsn=pg_dsn)
    t0 = time.perf_counter()
    steps.load_warehouse(s)
    steps.build_marts(s, work / "manual-target")
    steps.quality_gate(s, work / "manual-docs")
    rows = steps.publish(s)
    return time.perf_counter() - t0, sum(rows.values())


def _airflow(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        args, env=env, cwd=REPO, capture_output=True, text=True, check=False, timeout=7200
    )
    if done.returncode != 0:
        print(done.stdout[-3000:], done.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"failed: {' '.join(args[:3])}")
    return done.stdout


def _dag(pg_dsn: str, work: Path) -> tuple[float, float, int]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("EIOT_", "AIRFLOW"))},
        "AIRFLOW_HOME": str(work / "airflow"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__COSMOS__ENABLE_TELEMETRY": "False",
        "AIRFLOW__COSMOS__CACHE_DIR": str(work / "airflow" / "cosmos"),
        "EIOT_PG_DSN": pg_dsn,
        "EIOT_CLICKHOUSE_DSN": f"chdb://{work / 'dag'}",
    }
    python = str(AIRFLOW_BIN / "python")
    parsed = json.loads(_airflow(env, python, str(DRIVER), "parse", str(DAGS)).splitlines()[-1])
    if parsed["import_errors"]:
        raise SystemExit(f"DAG import errors: {parsed['import_errors']}")
    _airflow(env, str(AIRFLOW_BIN / "airflow"), "db", "migrate")
    _airflow(env, str(AIRFLOW_BIN / "airflow"), "dags", "reserialize")
    run = json.loads(
        _airflow(env, python, str(DRIVER), "test", str(DAGS), "warehouse_refresh").splitlines()[-1]
    )
    if run["state"] != "success":
        raise SystemExit(f"warehouse_refresh {run['state']}: {run['tasks']}")
    return run["seconds"], parsed["parse_s"], sum(run["xcom"]["publish"].values())


def run(meters: int, days: int, seed: int, keep: bool) -> dict[str, float]:
    if not (AIRFLOW_BIN / "python").exists():
        raise SystemExit("no .venv-airflow: make airflow-venv")
    work = Path(tempfile.mkdtemp(prefix="eiot-bench-orch-"))
    figures: dict[str, float] = {"meters": meters, "days": days}
    try:
        with scratch_database(keep=keep) as pg_dsn:
            with psycopg.connect(pg_dsn, autocommit=True) as pg:
                pg.execute("set synchronous_commit = off")
                figures["readings"] = write_warehouse_fleet(
                    pg, WarehouseFleet(meters=meters, days=days, seed=seed)
                )
                pg.execute("analyze")
            print(f"postgres: {figures['readings']:,} readings", flush=True)
            manual_s, manual_rows = _manual(pg_dsn, work)
            print(f"manual steps: {manual_s:.1f} s, {manual_rows:,} mart rows", flush=True)
            dag_s, parse_s, dag_rows = _dag(pg_dsn, work)
            print(f"warehouse_refresh: {dag_s:.1f} s, {dag_rows:,} mart rows", flush=True)
            if dag_rows != manual_rows:
                raise SystemExit(f"the DAG published {dag_rows} mart rows, by hand {manual_rows}")
            figures.update(
                dag_s=round(dag_s, 1),
                manual_s=round(manual_s, 1),
                dag_over_manual=round(dag_s / manual_s, 2),
                marts_rows=dag_rows,
                dag_parse_s=parse_s,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.orchestration",
        description="warehouse_refresh through Airflow against the same steps run directly.",
    )
    parser.add_argument("--meters", type=int, default=10_000, help="customer meters")
    parser.add_argument("--days", type=int, default=30, help="days of 30-minute readings")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the fleet")
    parser.add_argument("--keep-db", action="store_true", help="keep the Postgres database")
    args = parser.parse_args(argv)
    os.environ.setdefault("TZ", "UTC")
    report("bench.orchestration", run(args.meters, args.days, args.seed, args.keep_db), argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
