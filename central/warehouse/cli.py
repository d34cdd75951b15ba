"""``central warehouse ...`` and ``central quality ...``: argparse subcommands.

``register(subparsers)`` adds them to the ``central`` command; ``python -m central.warehouse``
runs them standalone.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from central.warehouse.settings import WarehouseSettings, get_settings


def _settings(args: argparse.Namespace) -> WarehouseSettings:
    overrides = {}
    if getattr(args, "dsn", None):
        overrides["clickhouse_dsn"] = args.dsn
    if getattr(args, "pg_dsn", None):
        overrides["pg_dsn"] = args.pg_dsn
    return get_settings(**overrides)


def _add_dsn(parser: argparse.ArgumentParser, pg: bool = False) -> None:
    parser.add_argument(
        "--dsn", help="ClickHouse DSN (default: EIOT_CLICKHOUSE_DSN, chdb:///<repo>/var/warehouse)"
    )
    if pg:
        parser.add_argument("--pg-dsn", help="PostgreSQL DSN (default: EIOT_PG_DSN)")


def cmd_serve(args: argparse.Namespace) -> int:
    from central.warehouse.client import chdb_path
    from central.warehouse.server import serve

    settings = _settings(args)
    path = Path(args.path) if args.path else chdb_path(settings.clickhouse_dsn)
    if path is None:
        print("serve needs an embedded warehouse: --path DIR or a chdb:/// DSN", file=sys.stderr)
        return 2
    port = settings.serve_port if args.port is None else args.port
    config = Path(args.config) if args.config else None
    try:
        serve(path, host=args.host or settings.serve_host, port=port, config_file=config)
    except (FileNotFoundError, ValueError) as exc:  # a configuration file or address refused
        print(exc, file=sys.stderr)
        return 2
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from central.warehouse.loader import TABLE_SPECS, load

    settings = _settings(args)
    tables = args.tables or list(TABLE_SPECS)
    console = Console(stderr=True)
    with Progress(
        TextColumn("{task.description:<15}"),
        BarColumn(),
        TextColumn("{task.completed:>12,.0f} rows"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as bar:
        tasks = {name: bar.add_task(name, total=None) for name in tables}

        def progress(table: str, rows: int) -> None:
            bar.advance(tasks[table], rows)

        results = load(settings, tables, progress=progress)
        for r in results:
            bar.update(tasks[r.table], total=max(r.rows, 1), completed=r.rows)
    for r in results:
        print(
            f"{r.table:<15} {r.rows:>12,} rows  {r.seconds:7.2f} s  {r.rows_per_s:>12,.0f} rows/s"
            f"  window ({r.lower:%Y-%m-%d %H:%M:%S}, {r.upper:%Y-%m-%d %H:%M:%S})"
        )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from central.warehouse.client import chdb_path, connect
    from central.warehouse.server import read_owner

    settings = _settings(args)
    path = chdb_path(settings.clickhouse_dsn)
    if path is not None:
        owner = read_owner(path)
        print(
            f"embedded warehouse {path}: "
            + (f"served by pid {owner['pid']} at {owner['url']}" if owner else "no owner process")
        )
    client = connect(settings.clickhouse_dsn)
    try:
        if not client.command("exists database raw"):
            print("no raw database yet: run `central warehouse load`")
            return 0
        rows = client.query(
            "select table_name, watermark, rows_loaded, updated_at "
            "from raw.load_watermarks final order by table_name"
        ).result_rows
        for table, watermark, loaded, updated in rows:
            print(f"{table:<15} watermark {watermark}  last load {loaded:,} rows at {updated}")
    finally:
        client.close()
    return 0


def cmd_dbt(args: argparse.Namespace) -> int:
    from central.warehouse.dbt import run_dbt

    settings = _settings(args)
    dbt_args = list(args.dbt_args)
    if dbt_args and dbt_args[0] == "--":
        dbt_args = dbt_args[1:]
    return run_dbt(settings, dbt_args or ["build"]).returncode


def cmd_report(args: argparse.Namespace) -> int:
    from central.warehouse.report import print_report

    print_report(_settings(args), limit=args.limit)
    return 0


def cmd_quality(args: argparse.Namespace) -> int:
    from central.metrics.poll import quality_results
    from central.warehouse.quality import run_quality

    settings = _settings(args)
    docs = Path(args.docs_dir) if args.docs_dir else None
    started = time.monotonic()
    outcome = run_quality(settings, suites=args.suite or None, docs_dir=docs)
    if args.results_file:  # for the exporter (central metrics serve, docs/monitoring.md)
        failed = [(f.suite, f.expectation) for f in outcome.failures]
        doc = quality_results(
            outcome.success, outcome.suites_run, failed, time.monotonic() - started
        )
        target = Path(args.results_file)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        tmp.replace(target)  # the exporter never reads half a file
    return 0 if outcome.success else 1


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``warehouse`` and ``quality`` command groups to a ``central`` subparsers object."""
    wh = subparsers.add_parser(
        "warehouse",
        help="the ClickHouse warehouse: serve, load, dbt, status, report",
        description="The ClickHouse warehouse: loads from Postgres raw, dbt models, reports.",
    )
    wh_sub = wh.add_subparsers(dest="warehouse_command", metavar="COMMAND", required=True)

    p = wh_sub.add_parser(
        "serve",
        help="own the embedded warehouse and serve it over ClickHouse's HTTP interface",
        description="Hold the embedded (chDB) warehouse in this process and serve it on "
        "127.0.0.1 through ClickHouse's HTTP interface, so the loader, dbt, the quality checks "
        "and dashboards can share it. A single-machine convenience: production uses a server.",
    )
    _add_dsn(p)
    p.add_argument("--path", help="data directory (default: the path of the chdb:/// DSN)")
    p.add_argument("--host", help="listen address (127.0.0.1 only)")
    p.add_argument("--port", type=int, help="listen port (default EIOT_SERVE_PORT, 8124; 0: any)")
    p.add_argument(
        "--config",
        metavar="FILE",
        help="a ClickHouse configuration file for the engine, e.g. "
        "deploy/clickhouse/one-node-cluster.xml (the cluster eiot on this one engine, so that "
        "dbt compile --target cluster runs without the cluster)",
    )
    p.set_defaults(func=cmd_serve)

    p = wh_sub.add_parser(
        "load",
        help="incremental load from Postgres raw into the ClickHouse raw tables",
        description="Copy new rows of raw.readings, alerts, quarantine, meters, grid_assets and "
        "gateway_status from Postgres into ClickHouse, in bulk, from each table's watermark.",
    )
    _add_dsn(p, pg=True)
    p.add_argument("--tables", nargs="+", metavar="TABLE", help="load only these tables")
    p.set_defaults(func=cmd_load)

    p = wh_sub.add_parser(
        "status",
        help="who owns the embedded warehouse, and each table's load watermark",
        description="Show the owner process of the embedded warehouse and the load watermarks.",
    )
    _add_dsn(p)
    p.set_defaults(func=cmd_status)

    p = wh_sub.add_parser(
        "dbt",
        help="run dbt (from .venv-dbt) against the warehouse, e.g. `warehouse dbt build`",
        description="Run a dbt command on the project in dbt/ against the warehouse. An embedded "
        "warehouse is served for the duration if no owner process runs.",
    )
    _add_dsn(p)
    p.add_argument("dbt_args", nargs=argparse.REMAINDER, help="dbt arguments (default: build)")
    p.set_defaults(func=cmd_dbt)

    p = wh_sub.add_parser(
        "report",
        help="print the top of the inspection list and the worst transformers by loss",
        description="Print the meters to visit first and the transformers losing most energy.",
    )
    _add_dsn(p)
    p.add_argument("--limit", type=int, default=10, help="rows per table (default 10)")
    p.set_defaults(func=cmd_report)

    q = subparsers.add_parser(
        "quality",
        help="data quality checks (Great Expectations) on Postgres raw and the marts",
        description="Great Expectations checkpoints on Postgres raw and the ClickHouse marts.",
    )
    q_sub = q.add_subparsers(dest="quality_command", metavar="COMMAND", required=True)
    p = q_sub.add_parser(
        "run",
        help="run the checkpoints; exit 1 and list the failing rows if any expectation fails",
        description="Validate Postgres raw and the marts, build Data Docs, exit non-zero on "
        "failure with the failing rows and the reasons.",
    )
    _add_dsn(p, pg=True)
    p.add_argument("--suite", action="append", help="run only this suite (repeatable)")
    p.add_argument("--docs-dir", help="where to build Data Docs (default gx/uncommitted/...)")
    p.add_argument(
        "--results-file", help="write the outcome here as JSON, for central metrics serve"
    )
    p.set_defaults(func=cmd_quality)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m central.warehouse",
        description="The central warehouse: ClickHouse loads, dbt, quality checks.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    register(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("central").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    return int(args.func(args))
