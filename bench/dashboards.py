"""How fast the control-room dashboards open: a simulated fleet in PostgreSQL, the warehouse
loaded and built (dbt), Superset over it with ``dashboards/`` imported, and a real headless
Chromium opening every dashboard ``--rounds`` times.

An opening is timed from navigation to the moment every chart has finished drawing
(``tests/support/superset.py``). The first round meets an empty chart cache (each chart queries
the warehouse), later rounds the cache Superset runs with (``superset_cache_s``), as analysts
opening the same dashboards do. Figures (last line, JSON):

* ``dashboards``, ``charts``, ``charts_failed``: the charts that showed an error or no data in
  any opening (``failed`` names them, with their state and error; the rows of
  ``bench/RESULTS.md`` without ``failed`` counted failed chart openings instead);
* ``p50_s``, ``p95_s``: over all openings; ``p95_cold_s``: over the first round;
* ``per_dashboard``: p50 and p95 per dashboard;
* ``slowest_chart_s`` and ``slowest_chart``: the longest chart data request the browser saw
  (Superset's work and the warehouse query).

The browser, Superset and the warehouse share this machine's cores.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from bench.results import report
from simulator.raw_db import scratch_database, write_warehouse_fleet
from simulator.warehouse_fleet import WarehouseFleet


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _build_marts(pg_dsn: str, work: Path) -> tuple[Any, str]:
    """The warehouse under ``work``, loaded and built; its owner process and URL."""
    from central.orchestration import steps
    from central.warehouse.client import spawn_owner

    proc, url = spawn_owner(work / "warehouse")
    s = steps.settings(clickhouse_dsn=url, pg_dsn=pg_dsn, dbt_target="embedded")
    steps.load_warehouse(s)
    steps.build_marts(s, work / "target")
    steps.publish(s)
    print(f"marts: {sum(steps.mart_rows(s).values()):,} rows", flush=True)
    return proc, url


def _open_dashboards(home: Any, rounds: int) -> dict[str, Any]:
    from central.dashboards import bundle
    from central.dashboards.__main__ import client
    from central.dashboards.server import ADMIN_USER
    from tests.support.browser import chromium
    from tests.support.superset import DashboardBrowser

    names = {
        c["id"]: c["slice_name"]
        for c in client(home).get("/api/v1/chart/?q=(page_size:100)")["result"]
    }
    boards = bundle.dashboards(home.settings.bundle_dir)
    seconds: dict[str, list[float]] = {d.slug: [] for d in boards}
    cold: list[float] = []
    failed: dict[str, str] = {}  # chart: its state (and error) when it last failed
    slowest = (0.0, "")
    with chromium(1600, 2400) as browser:
        page = DashboardBrowser(browser, home.url)
        page.login(ADMIN_USER, home.admin_password())
        for round_ in range(rounds):
            for d in boards:
                opened = page.open(d.slug, d.charts, timeout_s=180)
                seconds[d.slug].append(opened.seconds)
                if round_ == 0:
                    cold.append(opened.seconds)
                for c in opened.charts:
                    if c.state != "drawn":
                        failed[f"{d.slug}: {c.title}"] = c.state + (
                            f": {c.error}" if c.error else ""
                        )
                for url, s in opened.chart_queries:
                    chart = re.search(r"slice_id%22%3A(\d+)", url)
                    title = names.get(int(chart.group(1)), "?") if chart else "(filter values)"
                    slowest = max(slowest, (s, f"{d.slug}: {title}"))
                print(f"round {round_ + 1}/{rounds} {d.slug}: {opened.seconds:.2f} s", flush=True)
    every = [s for values in seconds.values() for s in values]
    return {
        "dashboards": len(boards),
        "charts": sum(d.charts for d in boards),
        "charts_failed": len(failed),
        "failed": [f"{chart} ({how})" for chart, how in sorted(failed.items())],
        "openings": len(every),
        "p50_s": round(statistics.median(every), 2),
        "p95_s": round(_quantile(every, 0.95), 2),
        "p95_cold_s": round(_quantile(cold, 0.95), 2),
        "per_dashboard": {
            slug: {"p50_s": round(statistics.median(v), 2), "p95_s": round(_quantile(v, 0.95), 2)}
            for slug, v in seconds.items()
        },
        "slowest_chart_s": round(slowest[0], 2),
        "slowest_chart": slowest[1],
    }


def run(meters: int, days: int, rounds: int, cache_s: int, seed: int) -> dict[str, Any]:
    from central.dashboards.__main__ import running
    from central.dashboards.settings import get_settings
    from central.local_services import free_port
    from central.warehouse.client import stop_owner

    work = Path(tempfile.mkdtemp(prefix="eiot-bench-dash-"))
    figures: dict[str, Any] = {"meters": meters, "days": days, "rounds": rounds, "cache_s": cache_s}
    try:
        with scratch_database("dash_bench") as pg_dsn:
            t0 = time.perf_counter()
            with psycopg.connect(pg_dsn, autocommit=True) as pg:
                pg.execute("set synchronous_commit = off")
                readings = write_warehouse_fleet(
                    pg, WarehouseFleet(meters=meters, days=days, seed=seed)
                )
            print(
                f"postgres: {readings:,} readings in {time.perf_counter() - t0:.0f} s", flush=True
            )
            proc, url = _build_marts(pg_dsn, work)
            try:
                settings = get_settings(
                    clickhouse_dsn=url,
                    superset_home=work / "superset",
                    superset_port=free_port(),
                    superset_cache_s=cache_s,
                )
                with running(settings) as (home, _):
                    figures.update(_open_dashboards(home, rounds))
            finally:
                stop_owner(proc)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.dashboards",
        description="Time from opening each Superset dashboard to its last chart drawn.",
    )
    parser.add_argument("--meters", type=int, default=10_000, help="customer meters")
    parser.add_argument("--days", type=int, default=30, help="days of 30-minute readings")
    parser.add_argument("--rounds", type=int, default=5, help="openings of each dashboard")
    parser.add_argument(
        "--cache-s", type=int, default=300, help="Superset's chart cache (0: no cache)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed of the fleet")
    args = parser.parse_args(argv)
    os.environ.setdefault("TZ", "UTC")
    report(
        "bench.dashboards", run(args.meters, args.days, args.rounds, args.cache_s, args.seed), argv
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
