"""Warehouse benchmark: ``python -m bench.warehouse --meters 10000 --days 30``.

Builds a throwaway Postgres database holding a synthetic fleet (``meters`` customer meters at
30-minute intervals for ``days`` days, plus one supply meter per transformer), then measures:

* ``load_rows_per_s``: ``central warehouse load`` from Postgres into a fresh embedded warehouse;
* ``dbt_build_s``: a full ``dbt build`` (models, data tests, unit tests) through the owner
  server;
* ``mart_query_p95_ms``: the dashboard queries (``DASHBOARD_QUERIES``) through the owner server.

The last line printed is one JSON object with those figures. The synthetic fleet (``Fleet``)
is also what the warehouse tests build on: it knows which transformers have meters bypassed
(theft), which meters steal, and every supply interruption it injected.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv

REPO = Path(__file__).resolve().parents[1]
SQL_DIR = REPO / "central" / "sql"
ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"

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


# -- the synthetic fleet ----------------------------------------------------------------------


@dataclass(frozen=True)
class Outage:
    feeder_id: str
    start_s: int  # epoch seconds, start of the first interval without supply
    intervals: int


@dataclass
class Fleet:
    """A small utility: feeders → transformers (each with a supply meter) → customer meters.

    Energy is consistent: a transformer's supply meter reads what its customers really used
    plus the technical loss of its network. Thieves bypass part of their load from
    ``theft_onset_day`` on, so their meters read less than they use and their transformer
    shows an unexplained loss. Feeders lose supply in blocks (load-shedding); every meter of
    the feeder then reads ``supply = off`` and zero energy.
    """

    meters: int = 200
    days: int = 14
    seed: int = 0
    start: str = "2026-03-01"
    interval_s: int = 1800
    customers_per_transformer: int = 40
    transformers_per_feeder: int = 8
    gateways_per_feeder: int = 1
    theft_transformer_share: float = 0.1
    thieves_per_theft_transformer: int = 0  # 0: 15% of the transformer's customers
    bypass_share: tuple[float, float] = (0.7, 0.9)
    theft_onset_day: int = -1  # -1: half-way through
    outages_per_feeder_day: float = 0.3
    missing_share: float = 0.002
    technical_loss_base: float = 0.035
    technical_loss_slope: float = 0.05
    technical_loss_jitter: float = 0.004
    rated_kva: float = 100.0

    n_transformers: int = field(init=False)
    n_feeders: int = field(init=False)
    theft_transformers: set[str] = field(init=False)
    thieves: set[str] = field(init=False)
    outages: list[Outage] = field(init=False)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        self.n_transformers = max(1, math.ceil(self.meters / self.customers_per_transformer))
        self.n_feeders = max(1, math.ceil(self.n_transformers / self.transformers_per_feeder))
        self.start_s = int(datetime.fromisoformat(self.start).replace(tzinfo=UTC).timestamp())
        self.per_day = 86400 // self.interval_s
        self.n_intervals = self.days * self.per_day
        self.onset_day = self.days // 2 if self.theft_onset_day < 0 else self.theft_onset_day
        # Topology.
        self.customer_ids = [f"M{i:06d}" for i in range(self.meters)]
        self.customer_tx = np.minimum(
            np.arange(self.meters) // self.customers_per_transformer, self.n_transformers - 1
        )
        self.tx_ids = [f"T{i:04d}" for i in range(self.n_transformers)]
        self.tx_feeder = np.arange(self.n_transformers) // self.transformers_per_feeder
        self.feeder_ids = [f"F{i:03d}" for i in range(self.n_feeders)]
        self.customer_class = np.where(rng.random(self.meters) < 0.8, "residential", "commercial")
        scale = np.where(self.customer_class == "residential", 0.25, 1.2)  # mean kW
        self.base_kw = scale * rng.lognormal(0.0, 0.35, self.meters)
        self.tx_loss_base = self.technical_loss_base + rng.uniform(
            -self.technical_loss_jitter, self.technical_loss_jitter, self.n_transformers
        )
        # Theft.
        n_theft_tx = max(1, round(self.theft_transformer_share * self.n_transformers))
        theft_tx = rng.choice(self.n_transformers, n_theft_tx, replace=False)
        self.theft_transformers = {self.tx_ids[t] for t in theft_tx}
        self.bypass = np.zeros(self.meters)
        for t in theft_tx:
            members = np.flatnonzero(self.customer_tx == t)
            k = self.thieves_per_theft_transformer or max(1, round(0.15 * len(members)))
            chosen = rng.choice(members, min(k, len(members)), replace=False)
            self.bypass[chosen] = rng.uniform(*self.bypass_share, len(chosen))
        self.thieves = {self.customer_ids[i] for i in np.flatnonzero(self.bypass > 0)}
        # Load-shedding blocks per feeder (1 to 3 hours, never across the end of the data).
        self.outages = []
        for f in range(self.n_feeders):
            for day in range(self.days):
                if rng.random() < self.outages_per_feeder_day:
                    length = int(rng.integers(2, 7)) * 1800 // self.interval_s
                    first = day * self.per_day + int(rng.integers(0, self.per_day - length))
                    self.outages.append(
                        Outage(self.feeder_ids[f], self.start_s + first * self.interval_s, length)
                    )
        self._rng_seed = int(rng.integers(0, 2**31))

    # -- registry --------------------------------------------------------------------------------

    def grid_assets(self) -> pa.Table:
        ids = ["R1", *self.feeder_ids, *self.tx_ids]
        types = ["region"] + ["feeder"] * self.n_feeders + ["transformer"] * self.n_transformers
        parents = [None] + ["R1"] * self.n_feeders + [self.feeder_ids[f] for f in self.tx_feeder]
        kva = [None] * (1 + self.n_feeders) + [self.rated_kva] * self.n_transformers
        return pa.table(
            {
                "asset_id": ids,
                "asset_type": types,
                "parent_id": parents,
                "name": ids,
                "rated_kva": pa.array(kva, pa.float64()),
            }
        )

    def meter_rows(self) -> pa.Table:
        tx_meter_ids = [f"TM{t[1:]}" for t in self.tx_ids]
        ids = self.customer_ids + tx_meter_ids
        roles = ["customer"] * self.meters + ["transformer"] * self.n_transformers
        classes = list(self.customer_class) + [None] * self.n_transformers
        tariffs = ["prepaid" if i % 3 else "postpaid" for i in range(self.meters)]
        tariffs += [None] * self.n_transformers
        tx = [self.tx_ids[t] for t in self.customer_tx] + self.tx_ids
        feeder_of_tx = [self.feeder_ids[f] for f in self.tx_feeder]
        feeders = [feeder_of_tx[t] for t in self.customer_tx] + feeder_of_tx
        return pa.table(
            {
                "meter_id": ids,
                "meter_role": roles,
                "customer_class": classes,
                "tariff": tariffs,
                "transformer_id": tx,
                "feeder_id": feeders,
                "region": ["R1"] * len(ids),
                "gateway_id": [self.gateway_of(f) for f in feeders],
            }
        )

    def gateway_of(self, feeder_id: str) -> str:
        return f"GW-{feeder_id}"

    # -- readings --------------------------------------------------------------------------------

    def _profile(self) -> np.ndarray:
        hours = (np.arange(self.per_day) + 0.5) * self.interval_s / 3600
        shape = (
            0.6
            + 0.25 * np.sin((hours - 8) / 24 * 2 * np.pi)
            + 0.9 * np.exp(-0.5 * ((hours - 19.5) / 1.5) ** 2)
        )
        return np.asarray(np.tile(shape / shape.mean(), self.days))

    def _supply_on(self) -> np.ndarray:
        on = np.ones((self.n_feeders, self.n_intervals), dtype=bool)
        for o in self.outages:
            f = self.feeder_ids.index(o.feeder_id)
            first = (o.start_s - self.start_s) // self.interval_s
            on[f, first : first + o.intervals] = False
        return on

    def readings(self, meters_per_block: int = 2000) -> Iterator[pa.Table]:
        """Readings as Arrow tables, a block of transformers (and their meters) at a time."""
        rng = np.random.default_rng(self._rng_seed)
        hours = self.interval_s / 3600
        profile = self._profile()
        supply = self._supply_on()
        ts = self.start_s + (np.arange(self.n_intervals) + 1) * self.interval_s
        onset = self.onset_day * self.per_day
        tx_per_block = max(1, meters_per_block // self.customers_per_transformer)
        for first_tx in range(0, self.n_transformers, tx_per_block):
            txs = np.arange(first_tx, min(first_tx + tx_per_block, self.n_transformers))
            cust = np.flatnonzero(np.isin(self.customer_tx, txs))
            on = supply[self.tx_feeder[self.customer_tx[cust]]]
            noise = rng.gamma(8.0, 1 / 8.0, (len(cust), self.n_intervals))
            true_kwh = self.base_kw[cust, None] * profile[None, :] * noise * hours * on
            metered = true_kwh.copy()
            metered[:, onset:] *= 1 - self.bypass[cust, None]
            # Supply meters: what the customers used, plus the technical loss.
            tx_true = np.zeros((len(txs), self.n_intervals))
            np.add.at(tx_true, self.customer_tx[cust] - first_tx, true_kwh)
            util = tx_true / hours / self.rated_kva
            ratio = self.tx_loss_base[txs, None] + self.technical_loss_slope * util
            ratio = np.minimum(ratio, 0.15)
            tx_kwh = tx_true / (1 - ratio)
            tx_on = supply[self.tx_feeder[txs]]
            ids = np.array(
                [self.customer_ids[i] for i in cust] + [f"TM{self.tx_ids[t][1:]}" for t in txs]
            )
            kwh = np.vstack([metered, tx_kwh])
            on_all = np.vstack([on, tx_on])
            feeders = np.concatenate([self.tx_feeder[self.customer_tx[cust]], self.tx_feeder[txs]])
            keep = rng.random(kwh.shape) >= self.missing_share
            flags = np.full(kwh.shape, "", dtype=object)
            thieves = np.flatnonzero(self.bypass[cust] > 0)
            if onset < self.n_intervals and len(thieves):
                flags[thieves[::2], onset] = "cover_open"  # half the thieves open the cover
            register = np.cumsum(kwh, axis=1)
            rows = np.flatnonzero(keep.ravel())
            n_rows, n_cols = kwh.shape
            meter_idx, t_idx = np.divmod(rows, n_cols)
            gateway = np.array([self.gateway_of(self.feeder_ids[f]) for f in feeders])
            yield pa.table(
                {
                    "meter_id": ids[meter_idx],
                    "ts": pa.array(ts[t_idx] * 1000, pa.int64()).cast(pa.timestamp("ms", "UTC")),
                    "interval_s": pa.array(np.full(len(rows), self.interval_s, np.int32)),
                    "kwh": kwh.ravel()[rows],
                    "register_kwh": register.ravel()[rows],
                    "voltage_v": pa.array(
                        230.0 + rng.normal(0, 3, len(rows)), mask=~on_all.ravel()[rows]
                    ),
                    "temperature_c": 27 + 4 * np.sin(t_idx / self.per_day * 2 * np.pi),
                    "supply": np.where(on_all.ravel()[rows], "on", "off"),
                    "flags": np.where(flags.ravel()[rows] == "", "{}", "{cover_open}"),
                    "gateway_id": gateway[meter_idx],
                    "batch_id": pa.array(np.char.add("b", (t_idx // 48).astype(str))),
                }
            )

    def alerts(self) -> pa.Table:
        """An edge 'anomaly' alert per thief per day after onset, plus tamper alerts."""
        rows: dict[str, list[object]] = {
            k: []
            for k in (
                "alert_id",
                "gateway_id",
                "meter_id",
                "ts",
                "kind",
                "score",
                "threshold",
                "model_version",
            )
        }
        index = {m: i for i, m in enumerate(self.customer_ids)}
        for meter in sorted(self.thieves):
            i = index[meter]
            gw = self.gateway_of(self.feeder_ids[self.tx_feeder[self.customer_tx[i]]])
            for day in range(self.onset_day, self.days, 2):
                ts = self.start_s + day * 86400 + 12 * 3600
                rows["alert_id"].append(f"a-{meter}-{day}")
                rows["gateway_id"].append(gw)
                rows["meter_id"].append(meter)
                rows["ts"].append(datetime.fromtimestamp(ts, UTC))
                rows["kind"].append("anomaly")
                rows["score"].append(0.9)
                rows["threshold"].append(0.7)
                rows["model_version"].append("iforest-1")
        return pa.table(rows)

    def gateway_status(self) -> pa.Table:
        gws = sorted({self.gateway_of(f) for f in self.feeder_ids})
        end = datetime.fromtimestamp(self.start_s + self.days * 86400, UTC)
        status = [
            json.dumps(
                {
                    "schema": "status.v1",
                    "gateway_id": g,
                    "state": "online",
                    "sent_at": end.isoformat(),
                    "agent_version": "0.1.0",
                    "buffer": {
                        "pending_readings": 10 * i,
                        "inflight_batches": i % 2,
                        "full": False,
                    },
                    "model": {
                        "name": "iforest",
                        "version": "iforest-1",
                        "loaded_at": end.isoformat(),
                    },
                }
            )
            for i, g in enumerate(gws)
        ]
        return pa.table(
            {
                "gateway_id": gws,
                "sent_at": [end] * len(gws),
                "state": ["online"] * len(gws),
                "status": status,
            }
        )

    @property
    def readings_count(self) -> int:
        return (self.meters + self.n_transformers) * self.n_intervals


# -- Postgres ---------------------------------------------------------------------------------


def _copy_arrow(pg: psycopg.Connection, table_name: str, table: pa.Table) -> None:
    buf = io.BytesIO()
    pacsv.write_csv(table, buf, pacsv.WriteOptions(include_header=False, quoting_style="needed"))
    cols = ", ".join(table.column_names)
    with pg.cursor() as cur, cur.copy(f"copy {table_name} ({cols}) from stdin (format csv)") as cp:
        cp.write(buf.getvalue())


def write_fleet(pg: psycopg.Connection, fleet: Fleet) -> int:
    """Registry, readings, alerts and gateway status of ``fleet`` into Postgres ``raw``."""
    with pg.transaction():
        _copy_arrow(pg, "raw.grid_assets", fleet.grid_assets())
        _copy_arrow(pg, "raw.meters", fleet.meter_rows())
    rows = 0
    for block in fleet.readings():
        with pg.transaction():
            _copy_arrow(pg, "raw.readings", block)
        rows += block.num_rows
    with pg.transaction():
        alerts = fleet.alerts()
        if alerts.num_rows:
            _copy_arrow(pg, "raw.alerts", alerts)
        _copy_arrow(pg, "raw.gateway_status", fleet.gateway_status())
        pg.execute(
            "insert into raw.quarantine (raw, reason, received_at, source) "
            "values ('{\"kwh\": -1}', 'validation: kwh must be >= 0', now(), 'bench')"
        )
    return rows


def migrate(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as pg:
        for path in sorted(SQL_DIR.glob("*.sql")):
            pg.execute(path.read_text())


@contextlib.contextmanager
def scratch_database(prefix: str = "wh_bench", keep: bool = False) -> Iterator[str]:
    """A new Postgres database with the raw schema, dropped afterwards; yields its DSN."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f"create database {name}")
    dsn = ADMIN_DSN.rsplit("/", 1)[0] + f"/{name}"
    try:
        migrate(dsn)
        yield dsn
    finally:
        if not keep:
            with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
                admin.execute(f"drop database if exists {name} with (force)")


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
            fleet = Fleet(meters=meters, days=days, seed=seed)
            t0 = time.perf_counter()
            with psycopg.connect(pg_dsn, autocommit=True) as pg:
                pg.execute("set synchronous_commit = off")
                rows = write_fleet(pg, fleet)
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
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())


# -- the project's simulator (simulator/), when installed ---------------------------------------


def write_simulated_fleet(dsn: str, fleet: Any) -> dict[tuple[str, int], tuple[float, float]]:
    """Registry and readings of a ``simulator.Fleet`` into Postgres ``raw``.

    Returns the ground truth per (transformer, UTC day number): energy stolen through a
    bypass (true minus metered kWh of the readings labelled ``bypass``) and energy supplied (the
    transformer meter's kWh).
    """
    from simulator import FLAG_NAMES
    from simulator.registry_db import upsert_registry

    registry = fleet.registry()
    upsert_registry(registry, dsn)
    meters = {m["meter_id"]: m for m in registry.meters}
    stolen: dict[tuple[str, int], float] = {}
    supplied: dict[tuple[str, int], float] = {}
    with psycopg.connect(dsn, autocommit=True) as pg:
        for chunk in fleet.chunks(chunk_intervals=96):
            n = len(chunk)
            bits, where = np.unique(chunk.flags.astype(np.int64), return_inverse=True)
            literal = np.array(
                [
                    "{"
                    + ",".join(name for b, name in enumerate(FLAG_NAMES) if int(f) >> b & 1)
                    + "}"
                    for f in bits
                ]
            )
            ids, inverse = np.unique(chunk.meter_id.astype(str), return_inverse=True)
            info = [meters.get(m, {}) for m in ids]
            gateway = np.array([m.get("gateway_id") or "gw" for m in info])[inverse]
            table = pa.table(
                {
                    "meter_id": ids[inverse],
                    "ts": pa.array(chunk.ts * 1000, pa.int64()).cast(pa.timestamp("ms", "UTC")),
                    "interval_s": np.full(n, chunk.interval_s, np.int32),
                    "kwh": chunk.kwh,
                    "register_kwh": chunk.register_kwh,
                    "voltage_v": pa.array(chunk.voltage_v, from_pandas=True),
                    "temperature_c": pa.array(chunk.temperature_c, from_pandas=True),
                    "humidity_pct": pa.array(chunk.humidity_pct, from_pandas=True),
                    "wind_ms": pa.array(chunk.wind_ms, from_pandas=True),
                    "supply": np.where(chunk.supply_on, "on", "off"),
                    "flags": literal[where],
                    "gateway_id": gateway,
                    "batch_id": np.full(n, "sim"),
                }
            )
            _copy_arrow(pg, "raw.readings", table)
            # Ground truth per (transformer, day), summed with numpy.
            tx = np.array([m.get("transformer_id") or "" for m in info])[inverse]
            supply_row = np.array([m.get("meter_role") == "transformer" for m in info])[inverse]
            day = (chunk.ts - 1) // 86400
            theft = np.where(chunk.label.astype(str) == "bypass", chunk.true_kwh - chunk.kwh, 0.0)
            keys, group = np.unique(
                np.char.add(np.char.add(tx, "|"), day.astype(str)), return_inverse=True
            )
            theft_sum = np.bincount(group, weights=theft, minlength=len(keys))
            supply_sum = np.bincount(
                group, weights=np.where(supply_row, chunk.kwh, 0.0), minlength=len(keys)
            )
            for key, t, sup in zip(
                keys.tolist(), theft_sum.tolist(), supply_sum.tolist(), strict=True
            ):
                name, _, number = key.partition("|")
                k = (name, int(number))
                stolen[k] = stolen.get(k, 0.0) + t
                supplied[k] = supplied.get(k, 0.0) + sup
    return {key: (stolen[key], value) for key, value in supplied.items() if key[0] and value > 0}
