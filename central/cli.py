"""``central``: the central site's commands (database, ingest, warehouse, quality)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from central.forwarder import register as register_forwarder
from central.metrics.cli import register as register_metrics
from central.security_cli import register as register_security
from central.security_cli import register_db_login
from central.settings import load_settings


def cmd_migrate(args: argparse.Namespace) -> int:
    from central.db import ensure_database, migrate

    settings = load_settings(args.config)
    dsn = args.dsn or settings.pg_dsn
    if settings.profile == "laptop" or args.create_db:
        ensure_database(dsn)
    applied = migrate(dsn)
    print(f"applied {len(applied)} migration(s)" + (f": {', '.join(applied)}" if applied else ""))
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from central.ingest import IngestWorker

    overrides = {"worker_id": args.worker_id} if args.worker_id else {}
    worker = IngestWorker(load_settings(args.config, **overrides))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    worker.run(stop)
    return 0


def cmd_retention(args: argparse.Namespace) -> int:
    from central.retention import Warehouse, clickhouse_warehouse, run

    settings = load_settings(args.config)
    warehouse: Warehouse | None = None
    try:
        from central.warehouse.settings import get_settings
    except ImportError:  # the warehouse extra is not installed: nothing can be dropped
        print("the warehouse extra is not installed: nothing will be dropped", file=sys.stderr)
    else:
        ch = args.clickhouse_dsn or get_settings().clickhouse_dsn
        warehouse = clickhouse_warehouse(ch)
    run(
        args.dsn or settings.pg_dsn,
        keep_days=args.keep_days if args.keep_days is not None else settings.retention_keep_days,
        warehouse=warehouse,
        dry_run=args.dry_run,
    )
    return 0


def cmd_registry_export(args: argparse.Namespace) -> int:
    import psycopg

    from central.meter_registry import gateway_registry, write_registry
    from edge_agent.registry import INTERMITTENT

    try:
        dsn = args.dsn or load_settings(args.config).pg_dsn
        registry = gateway_registry(dsn, args.gateway)
        write_registry(registry, args.out)
    except (ValueError, LookupError, OSError, psycopg.Error) as exc:
        print(f"registry export: {exc}".strip(), file=sys.stderr)
        return 1
    meters = registry["meters"]
    shapes = sum(1 for m in meters if m["load_shape"] == INTERMITTENT)
    print(
        f"{args.out}: {len(meters)} meters of gateway {args.gateway} "
        f"({shapes} intermittent); copy it to the gateway's registry_path and restart the agent"
    )
    return 0


def cmd_registry_pin_shapes(args: argparse.Namespace) -> int:
    import psycopg

    from central.meter_registry import pin_shapes, read_proposals

    try:
        proposals = read_proposals(args.proposals)
        dsn = args.dsn or load_settings(args.config).pg_dsn
        done = pin_shapes(dsn, proposals, dry_run=args.dry_run)
    except (ValueError, OSError, psycopg.Error) as exc:
        print(f"registry pin-shapes: {exc}".strip(), file=sys.stderr)
        return 1
    verb = "would pin" if args.dry_run else "pinned"
    for meter_id, shape in done.pinned:
        print(f"{verb} {meter_id} {shape}")
    for meter_id, why in done.skipped:
        print(f"not pinned {meter_id}: {why}")
    for p, now in done.review:
        print(f"review {p.meter_id}: pinned {now}, its readings say {p.decided} (not changed)")
    print(
        f"{len(done.pinned)} {verb}, {len(done.skipped)} not pinned, {len(done.review)} to "
        "review; then `central registry export` for the gateways concerned"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="central",
        description="Central site: PostgreSQL schema, MQTT ingest, warehouse and quality checks. "
        "Settings come from a TOML file (--config or EIOT_CONFIG) and EIOT_* variables.",
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    db = sub.add_parser("db", help="PostgreSQL schema", description="PostgreSQL schema commands.")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="COMMAND")
    mig = db_sub.add_parser(
        "migrate",
        help="apply the SQL migrations not applied yet (idempotent)",
        description="Apply central/sql/*.sql in name order; already applied files are skipped.",
    )
    mig.add_argument("--config", type=Path, help="TOML settings file")
    mig.add_argument(
        "--dsn",
        help="the owner's DSN (default: EIOT_PG_DSN): services' own logins cannot change it",
    )
    mig.add_argument(
        "--create-db", action="store_true", help="create the database if it does not exist"
    )
    mig.set_defaults(func=cmd_migrate)
    register_db_login(db_sub)

    ing = sub.add_parser(
        "ingest",
        help="run an MQTT → PostgreSQL ingest worker until stopped",
        description="Store readings batches exactly once and acknowledge them after commit. "
        "Run several with different --worker-id to share the load.",
    )
    ing.add_argument("--config", type=Path, help="TOML settings file")
    ing.add_argument("--worker-id", help="stable id of this worker (its MQTT session)")
    ing.set_defaults(func=cmd_ingest)

    ret = sub.add_parser(
        "retention",
        help="raw.readings partitions: make the months ahead, drop old ones the warehouse holds",
        description="Partitions of raw.readings (central/retention.py).",
    )
    ret_sub = ret.add_subparsers(dest="retention_command", required=True, metavar="COMMAND")
    rr = ret_sub.add_parser(
        "run",
        help="make the next months' partitions; drop months past the retention period whose "
        "every reading the warehouse holds",
        description="Drops a month only when it ended more than --keep-days ago, the warehouse "
        "load watermark is past its newest row and the warehouse holds as many readings of it. "
        "Prints every decision. Run as the database owner (it creates and drops tables).",
    )
    rr.add_argument("--config", type=Path, help="TOML settings file")
    rr.add_argument("--dsn", help="the owner's DSN (default: EIOT_PG_DSN)")
    rr.add_argument("--clickhouse-dsn", help="the warehouse (default: EIOT_CLICKHOUSE_DSN)")
    rr.add_argument("--keep-days", type=int, help="retention in PostgreSQL (default 92)")
    rr.add_argument(
        "--dry-run", action="store_true", help="say what would be dropped; change nothing"
    )
    rr.set_defaults(func=cmd_retention)

    reg = sub.add_parser(
        "registry",
        help="the meter registry: pin load shapes, write a gateway's registry file",
        description="The central meter registry (raw.meters) as gateways read it.",
    )
    reg_sub = reg.add_subparsers(dest="registry_command", required=True, metavar="COMMAND")
    rex = reg_sub.add_parser(
        "export",
        help="write one gateway's registry file (its meters' transformers, classes, load shapes "
        "and zones) from raw.meters",
        description="Writes the JSON the agent reads at start (registry_path), replacing the "
        "file whole (its directory is made if missing). Any login that may read raw.meters "
        "will do. Fails, writing nothing, for a malformed gateway id, a gateway with no meter, "
        "or a meter the agent would refuse (a class named like a load shape, an unknown time "
        "zone).",
    )
    rex.add_argument("--gateway", required=True, help="the gateway's id (gateway_id)")
    rex.add_argument("--out", type=Path, required=True, help="the registry file to write")
    rex.add_argument("--config", type=Path, help="TOML settings file")
    rex.add_argument("--dsn", help="PostgreSQL DSN (default: EIOT_PG_DSN)")
    rex.set_defaults(func=cmd_registry_export)
    rpin = reg_sub.add_parser(
        "pin-shapes",
        help="pin the load shapes `python -m ml load-shapes --out` proposes for meters that "
        "have none",
        description="Applies the `set` proposals to raw.meters in one transaction, for "
        "registered customer meters with no shape pinned (never over a shape pinned "
        "meanwhile); lists the `review` ones for a person. The file is checked whole first "
        "(a meter proposed twice, or an action that does not fit its shapes, is refused). Run "
        "as the registry's owner: no service role may write raw.meters (--dry-run only reads).",
    )
    rpin.add_argument("proposals", type=Path, help="the JSON file of `ml load-shapes --out`")
    rpin.add_argument(
        "--dry-run", action="store_true", help="say what would be pinned; change nothing"
    )
    rpin.add_argument("--config", type=Path, help="TOML settings file")
    rpin.add_argument("--dsn", help="the owner's DSN (default: EIOT_PG_DSN)")
    rpin.set_defaults(func=cmd_registry_pin_shapes)

    register_security(sub)
    register_forwarder(sub)
    register_metrics(sub)
    try:
        from central.warehouse.cli import register
    except ImportError:  # the warehouse extra is not installed
        pass
    else:
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
