"""Grid topology: regions -> feeders -> distribution transformers -> customer meters.

Customers are numbered transformer by transformer (off-grid solar home systems last), and each
gateway takes a contiguous run of transformers, so a gateway's grid customers are one slice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import rng
from .config import BAND_MIN_HOURS, FleetConfig

STANDARD_KVA = np.array(
    [25, 50, 100, 160, 250, 315, 400, 500, 630, 800, 1000, 1250, 1600, 2000, 2500], dtype=np.float64
)
SCHEME_NONE, SCHEME_ROTATION, SCHEME_BANDS = 0, 1, 2
SCHEMES = {"none": SCHEME_NONE, "rotation": SCHEME_ROTATION, "bands": SCHEME_BANDS}
POWER_FACTOR = 0.9


@dataclass(frozen=True)
class GatewaySlice:
    """Which customers and transformers a gateway reads (global indices)."""

    gateway_id: str
    customers: np.ndarray  # int64: grid customers (by transformer) then off-grid ones
    n_grid: int  # the first n_grid of ``customers`` hang off ``transformers``
    transformers: np.ndarray  # int64, consecutive


@dataclass
class Topology:
    region_ids: list[str]
    region_names: list[str]
    region_lat: np.ndarray
    region_lon: np.ndarray
    feeder_ids: list[str]
    feeder_region: np.ndarray
    feeder_scheme: np.ndarray
    feeder_group: np.ndarray
    feeder_band: list[str]
    feeder_band_min_h: np.ndarray
    feeder_lat: np.ndarray
    feeder_lon: np.ndarray
    tx_ids: list[str]
    tx_meter_ids: list[str]
    tx_feeder: np.ndarray
    tx_region: np.ndarray
    tx_first: np.ndarray  # index of the transformer's first customer
    tx_count: np.ndarray  # its number of customers
    tx_kva: np.ndarray
    tx_loss_base: np.ndarray
    tx_loss_slope: np.ndarray
    tx_unmetered_kwh_day: np.ndarray
    tx_v0: np.ndarray
    tx_lat: np.ndarray
    tx_lon: np.ndarray
    cust_ids: np.ndarray  # object (str)
    cust_class: np.ndarray  # int64 index into cfg.classes
    cust_tx: np.ndarray  # -1 off-grid
    cust_feeder: np.ndarray  # -1 off-grid
    cust_region: np.ndarray
    cust_prepaid: np.ndarray
    cust_level: np.ndarray  # kWh/day
    cust_register0: np.ndarray
    cust_age_days: np.ndarray
    cust_vdrop: np.ndarray  # volts of drop at full transformer utilisation
    cust_lat: np.ndarray
    cust_lon: np.ndarray
    cust_gateway: np.ndarray
    gateways: list[GatewaySlice]

    @property
    def n_customers(self) -> int:
        return len(self.cust_ids)

    @property
    def n_grid(self) -> int:
        return int(self.tx_count.sum())


def _counts(total: int, shares: np.ndarray) -> np.ndarray:
    """Split ``total`` by ``shares`` (largest remainder), summing exactly to ``total``."""
    if total == 0 or shares.sum() <= 0:
        return np.zeros(len(shares), np.int64)
    exact = total * shares / shares.sum()
    base = np.floor(exact).astype(np.int64)
    rest = total - int(base.sum())
    order = np.argsort(-(exact - base), kind="stable")
    base[order[:rest]] += 1
    return base


def _chunk_sizes(total: int, lo: int, hi: int, gen: np.random.Generator) -> np.ndarray:
    if total == 0:
        return np.zeros(0, np.int64)
    draws = gen.integers(lo, hi + 1, size=total // lo + 1)
    cum = np.cumsum(draws)
    n = int(np.searchsorted(cum, total)) + 1
    sizes = draws[:n].copy()
    sizes[-1] -= int(cum[n - 1]) - total
    return sizes[sizes > 0]


def build(cfg: FleetConfig) -> Topology:
    gen = rng.stream(cfg.seed, rng.TOPOLOGY)
    regions = cfg.region_specs
    classes = cfg.classes
    n_regions = len(regions)

    # Customers per class: grid classes first (numbered by transformer), off-grid last.
    shares = np.array([c.share for c in classes], np.float64)
    is_grid = np.array([c.grid for c in classes])
    class_counts = _counts(cfg.meters, shares)
    n_grid = int(class_counts[is_grid].sum())
    grid_classes = np.repeat(np.flatnonzero(is_grid), class_counts[is_grid])
    off_classes = np.repeat(np.flatnonzero(~is_grid), class_counts[~is_grid])
    cust_class = np.concatenate([gen.permutation(grid_classes), gen.permutation(off_classes)])
    n_cust = len(cust_class)

    # Transformers, feeders, regions.
    tx_count = _chunk_sizes(n_grid, *cfg.customers_per_transformer, gen)
    n_tx = len(tx_count)
    tx_first = np.concatenate([[0], np.cumsum(tx_count)[:-1]]).astype(np.int64)
    feeder_sizes = _chunk_sizes(n_tx, *cfg.transformers_per_feeder, gen)
    n_feeders = len(feeder_sizes)
    tx_feeder = np.repeat(np.arange(n_feeders), feeder_sizes)
    feeder_region = (np.arange(n_feeders) * n_regions) // max(n_feeders, 1)
    tx_region = feeder_region[tx_feeder] if n_tx else np.zeros(0, np.int64)

    cust_tx = np.full(n_cust, -1, np.int64)
    cust_tx[:n_grid] = np.repeat(np.arange(n_tx), tx_count)
    cust_feeder = np.full(n_cust, -1, np.int64)
    cust_feeder[:n_grid] = tx_feeder[cust_tx[:n_grid]]
    cust_region = np.empty(n_cust, np.int64)
    cust_region[:n_grid] = tx_region[cust_tx[:n_grid]]
    cust_region[n_grid:] = np.arange(n_cust - n_grid) % n_regions

    # Supply schemes.
    scheme_names = [cfg.shedding if cfg.shedding != "auto" else r.shedding for r in regions]
    feeder_scheme = np.array([SCHEMES[scheme_names[r]] for r in feeder_region], np.int8)
    feeder_group = gen.integers(0, cfg.shedding_groups, size=n_feeders)
    band_names = [b for b, _ in cfg.band_mix]
    band_p = np.array([p for _, p in cfg.band_mix], np.float64)
    band_idx = gen.choice(len(band_names), size=n_feeders, p=band_p / band_p.sum())
    feeder_band = [
        band_names[i] if feeder_scheme[f] == SCHEME_BANDS else "" for f, i in enumerate(band_idx)
    ]
    feeder_band_min_h = np.array(
        [BAND_MIN_HOURS[b] if b else 24.0 for b in feeder_band], np.float64
    )

    # Customer properties.
    lo = np.array([c.daily_kwh[0] for c in classes])[cust_class]
    hi = np.array([c.daily_kwh[1] for c in classes])[cust_class]
    cust_level = np.exp(gen.uniform(np.log(lo), np.log(hi)))
    prepaid_share = np.array([c.prepaid_share for c in classes])[cust_class]
    cust_prepaid = gen.random(n_cust) < prepaid_share
    cust_age_days = gen.integers(30, 3000, size=n_cust)
    cust_register0 = np.round(cust_level * cust_age_days * gen.uniform(0.6, 1.0, n_cust), 2)
    cust_vdrop = gen.uniform(2.0, 12.0, n_cust)

    # Transformer sizing from the customers' expected peak, some of them overloaded.
    peak_factor = np.array([max(c.weekday) / (sum(c.weekday) / 24) for c in classes])
    cust_peak_kw = cust_level * peak_factor[cust_class] / 24.0
    if n_tx:
        tx_peak_kw = np.add.reduceat(cust_peak_kw[:n_grid], tx_first)
        tx_level = np.add.reduceat(cust_level[:n_grid], tx_first)
    else:
        tx_peak_kw = tx_level = np.zeros(0)
    target_util = gen.uniform(0.45, 1.05, n_tx)
    need_kva = tx_peak_kw / POWER_FACTOR / target_util
    tx_kva = STANDARD_KVA[
        np.minimum(np.searchsorted(STANDARD_KVA, need_kva), len(STANDARD_KVA) - 1)
    ]
    tx_loss_base = gen.uniform(*cfg.loss_base, n_tx)
    tx_loss_slope = gen.uniform(*cfg.loss_slope, n_tx)
    tx_unmetered = np.zeros(n_tx)
    n_hooked = int(round(cfg.unmetered_share * n_tx))
    hooked = gen.permutation(n_tx)[:n_hooked]
    tx_unmetered[hooked] = tx_level[hooked] * gen.uniform(0.05, 0.2, n_hooked)
    tx_v0 = gen.uniform(228.0, 240.0, n_tx)

    # Coordinates: feeders within ~10 km of the region centre, transformers ~1.5 km of the
    # feeder, customers ~200 m of their transformer.
    region_lat = np.array([r.latitude for r in regions])
    region_lon = np.array([r.longitude for r in regions])
    feeder_lat = region_lat[feeder_region] + gen.normal(0, 0.08, n_feeders)
    feeder_lon = region_lon[feeder_region] + gen.normal(0, 0.08, n_feeders)
    tx_lat = feeder_lat[tx_feeder] + gen.normal(0, 0.015, n_tx)
    tx_lon = feeder_lon[tx_feeder] + gen.normal(0, 0.015, n_tx)
    cust_lat = np.empty(n_cust)
    cust_lon = np.empty(n_cust)
    cust_lat[:n_grid] = tx_lat[cust_tx[:n_grid]] + gen.normal(0, 0.002, n_grid)
    cust_lon[:n_grid] = tx_lon[cust_tx[:n_grid]] + gen.normal(0, 0.002, n_grid)
    n_off = n_cust - n_grid
    cust_lat[n_grid:] = region_lat[cust_region[n_grid:]] + gen.normal(0, 0.3, n_off)
    cust_lon[n_grid:] = region_lon[cust_region[n_grid:]] + gen.normal(0, 0.3, n_off)

    gateways = _split_gateways(cfg.gateways, tx_first, tx_count, n_grid, n_cust)
    cust_gateway = np.empty(n_cust, np.int64)
    for g, gw in enumerate(gateways):
        cust_gateway[gw.customers] = g
    return Topology(
        region_ids=[f"REG-{r.code}" for r in regions],
        region_names=[r.name for r in regions],
        region_lat=region_lat,
        region_lon=region_lon,
        feeder_ids=[f"FDR-{i + 1:04d}" for i in range(n_feeders)],
        feeder_region=feeder_region,
        feeder_scheme=feeder_scheme,
        feeder_group=feeder_group,
        feeder_band=feeder_band,
        feeder_band_min_h=feeder_band_min_h,
        feeder_lat=feeder_lat,
        feeder_lon=feeder_lon,
        tx_ids=[f"DT-{i + 1:05d}" for i in range(n_tx)],
        tx_meter_ids=[f"TX-{i + 1:05d}" for i in range(n_tx)],
        tx_feeder=tx_feeder,
        tx_region=tx_region,
        tx_first=tx_first,
        tx_count=tx_count,
        tx_kva=tx_kva,
        tx_loss_base=tx_loss_base,
        tx_loss_slope=tx_loss_slope,
        tx_unmetered_kwh_day=tx_unmetered,
        tx_v0=tx_v0,
        tx_lat=tx_lat,
        tx_lon=tx_lon,
        cust_ids=np.array([f"M-{i + 1:07d}" for i in range(n_cust)], dtype=object),
        cust_class=cust_class,
        cust_tx=cust_tx,
        cust_feeder=cust_feeder,
        cust_region=cust_region,
        cust_prepaid=cust_prepaid,
        cust_level=cust_level,
        cust_register0=cust_register0,
        cust_age_days=cust_age_days,
        cust_vdrop=cust_vdrop,
        cust_lat=cust_lat,
        cust_lon=cust_lon,
        cust_gateway=cust_gateway,
        gateways=gateways,
    )


def _split_gateways(
    n_gw: int, tx_first: np.ndarray, tx_count: np.ndarray, n_grid: int, n_cust: int
) -> list[GatewaySlice]:
    """Contiguous runs of transformers with about equal customer counts; off-grid meters split
    evenly. Every gateway must get at least one meter."""
    n_tx = len(tx_count)
    if n_tx:
        mid = tx_first + tx_count / 2.0
        tx_gw = np.minimum((mid * n_gw / max(n_grid, 1)).astype(np.int64), n_gw - 1)
    else:
        tx_gw = np.zeros(0, np.int64)
    n_off = n_cust - n_grid
    off_bounds = n_grid + (np.arange(n_gw + 1) * n_off) // n_gw
    slices = []
    for g in range(n_gw):
        txs = np.flatnonzero(tx_gw == g)
        if len(txs):
            lo = int(tx_first[txs[0]])
            hi = int(tx_first[txs[-1]] + tx_count[txs[-1]])
        else:
            lo = hi = 0
        grid = np.arange(lo, hi, dtype=np.int64)
        off = np.arange(off_bounds[g], off_bounds[g + 1], dtype=np.int64)
        if len(grid) + len(off) == 0:
            raise ValueError(
                f"gateway {g + 1} of {n_gw} would have no meters: use fewer gateways "
                f"(this fleet has {n_tx} transformers)"
            )
        slices.append(
            GatewaySlice(
                gateway_id=f"gw-{g + 1:02d}",
                customers=np.concatenate([grid, off]),
                n_grid=len(grid),
                transformers=txs.astype(np.int64),
            )
        )
    return slices
