"""Warehouse benchmark: ``python -m bench.warehouse --meters 10000 --days 30``.

Builds a throwaway Postgres database holding a synthetic fleet (``meters`` customer meters at
30-minute intervals for ``days`` days, plus one supply meter per transformer), then measures:

* ``load_rows_per_s``: ``central warehouse load`` from Postgres into a fresh embedded warehouse;
* ``dbt_build_s``: a full ``dbt build`` (models, data tests, unit tests) through the owner
  server;
* ``mart_query_p95_ms``: the dashboard queries (``DASHBOARD_QUERIES``) through the owner server.

The last line printed is one JSON object with those figures. The fleet is
``simulator.warehouse_fleet.WarehouseFleet``, written by ``simulator.raw_db`` (the warehouse
tests build on both).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from bench.results import report
from simulator.raw_db import scratch_database, write_warehouse_fleet
from simulator.warehouse_fleet import WarehouseFleet

# What a dashboard asks the marts (Superset/Grafana panels): the p95 of these is reported.
DASHBOARD_QUERIES: dict[str, str] = {
    "inspection_top": """
        select inspection_rank, meter_id, transformer_id, inspection_score, reasons
        from marts.mart_inspection_list order by inspection_rank limit 50""",
    "worst_transformers": """
        select asset_id, feeder_id, sum(supplied_kwh) as supplied_kwh_total,
               sum(unexplained_loss_kwh) as unexplained_kwh_total,
               100 * sum(unexplained_loss_kwh) / sum(supplied_kwh) as unexplained_pct
        from marts.mart_energy_balance
        where asset_level = 'transformer' and is_complete
        group by asset_id, feeder_id order by unexplained_pct desc limit 20""",
    "consumption_by_region_day": """
        select reading_date, region, customer_class, sum(energy_kwh) as energy_kwh_total,
               uniqExact(meter_id) as meters
        from marts.mart_consumption_metrics
        group by reading_date, region, customer_class order by reading_date, region""",
    "reliability_by_feeder": """
        select feeder_id, month_start, saifi, saidi_min, caidi_min
        from marts.mart_supply_reliability order by saidi_min desc limit 50""",
    "completeness_by_gateway_day": """
        select gateway_id, reading_date, avg(completeness_ratio) as completeness
        from marts.mart_data_completeness group by gateway_id, reading_date
        order by reading_date desc, completeness limit 200""",
    "meter_hourly_profile": """
        select reading_hour, energy_kwh, supply_off_count
        from intermediate.int_readings_hourly
        where meter_id = (select meter_id from marts.mart_inspection_list
                          where inspection_rank = 1)
        order by reading_hour""",
    "anomalies_latest_day": """
        select meter_id, anomaly_score, reasons from marts.mart_anomaly_flags
        where reading_date = (select max(reading_date) from marts.mart_anomaly_flags)
          and is_anomalous
        order by anomaly_score desc limit 100""",
    "gateway_health": "select * from marts.mart_gateway_health order by last_seen_at",
}


# -- the benchmark ----------------------------------------------------------------------------


def _p95(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]


def run(meters: int, days: int, seed: int, repeats: int, keep: bool) -> dict[str, float]:
    from central.warehouse.client import connect, spawn_owner, stop_owner
    from central.warehouse.dbt import run_dbt
    from central.warehouse.loader import load
    from central.warehouse.settings import get_settings

    work = Path(tempfile.mkdtemp(prefix="eiot-bench-"))
    figures: dict[str, float] = {"meters": meters, "days": days}
    try:
        with scratch_database(keep=keep) as pg_dsn:
            fleet = WarehouseFleet(meters=meters, days=days, seed=seed)
            t0 = time.perf_counter()
            with psycopg.connect(pg_dsn, autocommit=True) as pg:
                pg.execute("set synchronous_commit = off")
                rows = write_warehouse_fleet(pg, fleet)
                pg.execute("analyze")
            figures["readings"] = rows
            figures["postgres_write_s"] = round(time.perf_counter() - t0, 1)
            print(f"postgres: {rows:,} readings in {figures['postgres_write_s']} s", flush=True)

            settings = get_settings(clickhouse_dsn=f"chdb://{work}/warehouse", pg_dsn=pg_dsn)
            t0 = time.perf_counter()
            results = load(settings)
            elapsed = time.perf_counter() - t0
            loaded = sum(r.rows for r in results)
            figures["load_s"] = round(elapsed, 2)
            figures["load_rows_per_s"] = round(loaded / elapsed)
            print(f"load: {loaded:,} rows in {elapsed:.1f} s", flush=True)

            proc, url = spawn_owner(work / "warehouse")
            try:
                settings = get_settings(clickhouse_dsn=url, pg_dsn=pg_dsn, dbt_target="embedded")
                t0 = time.perf_counter()
                done = run_dbt(settings, ["build"], capture=True)
                figures["dbt_build_s"] = round(time.perf_counter() - t0, 1)
                if done.returncode != 0:
                    print(done.stdout[-4000:], file=sys.stderr)
                    raise SystemExit("dbt build failed")
                print(f"dbt build: {figures['dbt_build_s']} s", flush=True)
                client = connect(url)
                samples: list[float] = []
                per_query: dict[str, float] = {}
                for name, sql in DASHBOARD_QUERIES.items():
                    client.query(sql)  # warm up
                    times = []
                    for _ in range(repeats):
                        t0 = time.perf_counter()
                        client.query(sql)
                        times.append((time.perf_counter() - t0) * 1000)
                    per_query[name] = round(statistics.median(times), 1)
                    samples += times
                print("dashboard medians (ms): " + json.dumps(per_query), flush=True)
                figures["mart_query_p95_ms"] = round(_p95(samples), 1)
                client.close()
            finally:
                stop_owner(proc)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.warehouse",
        description="Benchmark the warehouse: load rate, dbt build time, dashboard query p95.",
    )
    parser.add_argument("--meters", type=int, default=10_000, help="customer meters")
    parser.add_argument("--days", type=int, default=30, help="days of 30-minute readings")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the fleet")
    parser.add_argument("--repeats", type=int, default=20, help="runs per dashboard query")
    parser.add_argument("--keep-db", action="store_true", help="keep the Postgres database")
    args = parser.parse_args(argv)
    os.environ.setdefault("TZ", "UTC")
    figures = run(args.meters, args.days, args.seed, args.repeats, args.keep_db)
    report("bench.warehouse", figures, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
