"""A compact synthetic utility with an exact energy balance, for the warehouse tests and bench.

``WarehouseFleet`` is not the realistic simulator (``simulator.Fleet``): it is small, fast and
fully known, so a test can say which transformers must show an unexplained loss, which meters
steal, and when every feeder lost supply. It produces the Arrow tables that
``simulator.raw_db.write_warehouse_fleet`` copies into PostgreSQL ``raw``: the registry
(grid assets, meters), the readings, edge alerts and gateway status.

Needs numpy and pyarrow (the ``warehouse`` extra). Like ``simulator.raw_db``, this module is
not imported by ``simulator/__init__.py`` (the simulator itself needs numpy alone): import it
explicitly.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa


@dataclass(frozen=True)
class Outage:
    """A block of load-shedding: ``intervals`` intervals without supply on one feeder."""

    feeder_id: str
    start_s: int  # epoch seconds, start of the first interval without supply
    intervals: int


@dataclass
class WarehouseFleet:
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
        # Transformers scattered over ~20 km around a city centre (their own random stream:
        # the rest of the fleet does not change with it); feeders and the region have none.
        where = np.random.default_rng(self.seed + 1)
        lat = [None] * (1 + self.n_feeders) + list(
            6.50 + where.uniform(-0.1, 0.1, self.n_transformers)
        )
        lon = [None] * (1 + self.n_feeders) + list(
            3.38 + where.uniform(-0.1, 0.1, self.n_transformers)
        )
        return pa.table(
            {
                "asset_id": ids,
                "asset_type": types,
                "parent_id": parents,
                "name": ids,
                "rated_kva": pa.array(kva, pa.float64()),
                "latitude": pa.array(lat, pa.float64()),
                "longitude": pa.array(lon, pa.float64()),
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

    def quarantine(self) -> list[tuple[str, str, int]]:
        """What central quarantined from each gateway: (gateway, reason, rows), a few rows per
        gateway, with reasons worded as the ingest words them."""
        rng = np.random.default_rng(self.seed + 2)
        reasons = ("schema: kwh: out of range", "schema: ts: in the future", "malformed_json")
        return [
            (self.gateway_of(f), reason, int(rng.integers(1, 6)))
            for f in self.feeder_ids
            for reason in reasons
            if rng.random() < 0.7
        ]

    @property
    def readings_count(self) -> int:
        return (self.meters + self.n_transformers) * self.n_intervals
