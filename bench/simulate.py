"""Benchmark the simulator: readings generated per second and peak memory.

    python -m bench.simulate --meters 100000 --days 7

Generates every chunk of the fleet (all columns, labels included) without writing it anywhere.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from collections.abc import Sequence

from bench.results import report
from simulator import Fleet, FleetConfig


def _rss_mb() -> float:
    # Linux reports ru_maxrss in KiB (macOS in bytes).
    scale = 1 / 1024 / 1024 if sys.platform == "darwin" else 1 / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.simulate", description="Time the fleet simulator."
    )
    parser.add_argument("--meters", type=int, default=100_000, help="customer meters")
    parser.add_argument("--days", type=float, default=7, help="days simulated")
    parser.add_argument("--interval", type=int, default=1800, help="interval seconds")
    parser.add_argument("--gateways", type=int, default=1, help="gateways")
    parser.add_argument("--chunk-intervals", type=int, default=48, help="intervals per chunk")
    parser.add_argument("--seed", type=int, default=1, help="random seed")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    fleet = Fleet(
        FleetConfig(
            meters=args.meters,
            days=args.days,
            interval_s=args.interval,
            gateways=args.gateways,
            seed=args.seed,
        )
    )
    t_build = time.perf_counter() - t0
    rss_after_build = _rss_mb()
    print(
        f"fleet: {fleet.meter_count():,} meters ({args.meters:,} customers), "
        f"{fleet.total_intervals:,} intervals; topology built in {t_build:.2f} s"
    )

    rows = labelled = 0
    t1 = time.perf_counter()
    for chunk in fleet.chunks(chunk_intervals=args.chunk_intervals):
        rows += len(chunk)
        labelled += int((chunk.label_code > 0).sum())
    elapsed = time.perf_counter() - t1
    rate = rows / elapsed
    peak = _rss_mb()
    print(
        f"generated {rows:,} readings ({labelled:,} labelled) in {elapsed:.2f} s: "
        f"{rate:,.0f} readings/s"
    )
    print(f"peak RSS {peak:,.0f} MB (after topology {rss_after_build:,.0f} MB)")
    report(
        "bench.simulate",
        {
            "meters": fleet.meter_count(),
            "days": args.days,
            "interval_s": args.interval,
            "readings": rows,
            "seconds": round(elapsed, 3),
            "build_seconds": round(t_build, 3),
            "readings_per_s": round(rate),
            "peak_rss_mb": round(peak, 1),
        },
        argv,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
