"""``python -m simulator``: generate a fleet's readings, labels and registry; load the seed CSV."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import LOAD_STYLES, REGION_TEMPLATES, FleetConfig


def _fleet_args(p: argparse.ArgumentParser) -> None:
    d = FleetConfig()
    g = p.add_argument_group("fleet")
    g.add_argument(
        "--meters",
        type=int,
        default=d.meters,
        help=f"customer meters; transformer meters come on top (default {d.meters})",
    )
    g.add_argument(
        "--days", type=float, default=d.days, help=f"days to simulate, may be fractional ({d.days})"
    )
    g.add_argument("--start", default=d.start, help=f"first day, UTC date ({d.start})")
    g.add_argument(
        "--interval",
        type=int,
        default=d.interval_s,
        choices=(900, 1800, 3600),
        help=f"interval length in seconds ({d.interval_s})",
    )
    g.add_argument("--seed", type=int, default=d.seed, help=f"random seed ({d.seed})")
    g.add_argument(
        "--gateways",
        type=int,
        default=d.gateways,
        help=f"gateways the meters are split over ({d.gateways})",
    )
    g.add_argument(
        "--theft-share",
        type=float,
        default=d.theft_share,
        help=f"share of grid customers stealing ({d.theft_share})",
    )
    g.add_argument(
        "--fault-share",
        type=float,
        default=d.fault_share,
        help=f"share of grid customers with a faulty meter ({d.fault_share})",
    )
    codes = ",".join(r.code for r in REGION_TEMPLATES)
    g.add_argument(
        "--regions",
        default=str(d.regions),
        help=f"number of regions, or region codes among {codes} ({d.regions})",
    )
    g.add_argument(
        "--shedding",
        default=d.shedding,
        choices=("auto", "rotation", "bands", "none"),
        help="load-shedding scheme; auto = each region's own (default)",
    )
    g.add_argument(
        "--load-style",
        default=d.load_style,
        choices=LOAD_STYLES,
        help="how customers draw their energy: household (smooth shapes), bursty (a few "
        "appliances switching on and off), commercial (shops and workshops, smooth)"
        f" ({d.load_style})",
    )


def config_from_args(args: argparse.Namespace) -> FleetConfig:
    regions: dict[str, Any] = (
        {"regions": int(args.regions)}
        if args.regions.isdigit()
        else {"region_codes": tuple(c.strip().upper() for c in args.regions.split(","))}
    )
    return FleetConfig.for_style(
        args.load_style,
        meters=args.meters,
        days=args.days,
        start=args.start,
        interval_s=args.interval,
        seed=args.seed,
        gateways=args.gateways,
        theft_share=args.theft_share,
        fault_share=args.fault_share,
        shedding=args.shedding,
        **regions,
    )


class _Progress:
    def __init__(self, total_intervals: int, quiet: bool) -> None:
        self.total = total_intervals
        self.quiet = quiet
        self.t0 = time.perf_counter()
        self.tty = sys.stderr.isatty()
        self._last_pct = -10

    def __call__(self, rows: int, intervals: int) -> None:
        if self.quiet:
            return
        pct = 100 * intervals // max(self.total, 1)
        if not self.tty and pct < self._last_pct + 10 and intervals < self.total:
            return
        self._last_pct = pct
        rate = rows / max(time.perf_counter() - self.t0, 1e-9)
        end = "\r" if self.tty and intervals < self.total else "\n"
        print(
            f"  {pct:3d}%  {rows:,} readings  {rate:,.0f}/s", end=end, file=sys.stderr, flush=True
        )


def cmd_generate(args: argparse.Namespace) -> int:
    from .fleet import Fleet
    from .writers import write_fleet

    fleet = Fleet(config_from_args(args))
    formats = ("csv", "parquet") if args.format == "both" else (args.format,)
    gateway: int | str | None = args.gateway
    if gateway is not None and gateway.isdigit():
        gateway = int(gateway)
    progress = _Progress(fleet.total_intervals, args.quiet)
    if not args.quiet:
        print(
            f"simulating {fleet.meter_count(gateway):,} meters x {fleet.total_intervals:,} "
            f"intervals -> {args.out}",
            file=sys.stderr,
        )
    summary = write_fleet(
        fleet,
        Path(args.out),
        formats,
        gateway=gateway,
        chunk_intervals=args.chunk_intervals,
        truth=args.truth,
        progress=progress,
    )
    print(json.dumps(summary, indent=1))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .fleet import Fleet

    fleet = Fleet(config_from_args(args))
    reg = fleet.registry()
    customers = [m for m in reg.meters if m["meter_role"] == "customer"]
    truth = fleet.ground_truth()
    info = {
        "customers": len(customers),
        "transformer_meters": len(reg.meters) - len(customers),
        "assets": dict(Counter(a["asset_type"] for a in reg.assets)),
        "classes": dict(Counter(m["customer_class"] for m in customers)),
        "tariffs": dict(Counter(m["tariff"] for m in customers)),
        "gateways": {g: len(fleet.meter_ids_for_gateway(g)) for g in fleet.gateway_ids},
        "ground_truth": dict(Counter(t["label"] for t in truth)),
        "daily_stage": fleet.supply_info()["daily_stage"],
        "readings": fleet.meter_count() * fleet.total_intervals,
    }
    print(json.dumps(info, indent=1))
    return 0


def cmd_registry(args: argparse.Namespace) -> int:
    from .fleet import Fleet

    fleet = Fleet(config_from_args(args))
    if args.json:
        from .writers import write_registry_json

        write_registry_json(fleet, Path(args.json))
        print(f"wrote {args.json}", file=sys.stderr)
    if args.dsn:
        from .registry_db import upsert_registry

        counts = upsert_registry(fleet.registry(), args.dsn)
        print(json.dumps(counts))
    if not args.json and not args.dsn:
        print("nothing to do: give --dsn and/or --json", file=sys.stderr)
        return 2
    return 0


def cmd_seed(args: argparse.Namespace) -> int:
    from .seed import load_seed_csv

    load = load_seed_csv(args.path, meter_id=args.meter_id)
    for line, message, raw in load.errors:
        print(f"line {line}: {message}: {raw[:120]}", file=sys.stderr)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            for reading in load.readings:
                fh.write(json.dumps(reading) + "\n")
    if args.labels:
        with open(args.labels, "w", encoding="utf-8") as fh:
            fh.write("meter_id,ts,label\n")
            for meter_id, ts, label in load.labels:
                fh.write(f"{meter_id},{ts},{label}\n")
    labels = Counter(label for _, _, label in load.labels)
    print(
        json.dumps(
            {
                "readings": len(load.readings),
                "labels": dict(labels),
                "errors": len(load.errors),
                "interval_s": load.interval_s,
            }
        )
    )
    return 1 if load.errors else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simulator",
        description="Simulate a sub-Saharan distribution grid's smart meters: consumption, "
        "load-shedding, prepaid gaps, losses and labelled theft.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "generate",
        help="write readings (CSV/Parquet), labels and registry",
        description="Write readings.csv/.parquet, labels.csv (one row per "
        "labelled reading) and registry.json to an output directory.",
    )
    _fleet_args(p)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument(
        "--format",
        choices=("csv", "parquet", "both"),
        default="csv",
        help="readings file format (default csv)",
    )
    p.add_argument(
        "--gateway",
        default=None,
        help="only this gateway's meters (index from 0, or id like gw-01)",
    )
    p.add_argument(
        "--chunk-intervals",
        type=int,
        default=48,
        help="intervals per written chunk (memory vs speed; default 48)",
    )
    p.add_argument(
        "--truth", action="store_true", help="add true_kwh and label columns to the readings file"
    )
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser(
        "info",
        help="summarise a fleet (counts, classes, thefts) as JSON",
        description="Build the fleet's topology and print a JSON summary.",
    )
    _fleet_args(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "registry",
        help="upsert the registry into PostgreSQL and/or JSON",
        description="Upsert raw.grid_assets and raw.meters (needs psycopg), "
        "and/or write registry.json.",
    )
    _fleet_args(p)
    p.add_argument("--dsn", help="PostgreSQL DSN, e.g. postgresql://postgres@127.0.0.1/eiot")
    p.add_argument("--json", help="write the registry JSON to this path")
    p.set_defaults(func=cmd_registry)

    p = sub.add_parser(
        "seed",
        help="load the seed dataset's CSV, report per-row errors",
        description="Load the seed Kaggle CSV into wire readings + labels; "
        "exit status 1 if any row is bad.",
    )
    p.add_argument("path", help="the seed CSV file")
    p.add_argument("--meter-id", default="seed-0001", help="meter id to give its readings")
    p.add_argument("--out", help="write the readings as JSON lines to this path")
    p.add_argument("--labels", help="write meter_id,ts,label CSV to this path")
    p.set_defaults(func=cmd_seed)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, KeyError, IndexError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
