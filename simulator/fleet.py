"""The fleet: topology built once, readings generated day by day and handed out in chunks.

Generation runs per (UTC day, gateway), each with its own random streams, so the data are the
same whatever the chunk size and whether one gateway or all are read. Memory is bounded by one
day of the gateways being read, whatever the number of days.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import losses, rng
from .chunk import BLOCK_FIELDS, Chunk, DayBlock
from .config import HOOKUP_WEIGHTS, FleetConfig
from .consumption import ConsumptionModel
from .credit import CreditModel
from .labels import FLAG_BIT
from .registry import Registry, build_registry, ground_truth, supply_info
from .supply import SupplyModel
from .theft import TheftInjector, make_plan
from .timegrid import LocalDay, TimeGrid
from .topology import Topology, build
from .weather import Weather, cooling_duty

NO_CREDIT = np.uint16(FLAG_BIT["no_credit"])
V_MIN, V_MAX = 170.0, 255.0


@dataclass(frozen=True)
class _Static:
    """Per-gateway constants, gathered once."""

    index: int
    meter_ids: np.ndarray  # customers then transformer meters
    n_cust: int
    n_grid: int
    txs: np.ndarray
    key: np.ndarray
    klass: np.ndarray
    level: np.ndarray
    region_all: np.ndarray  # region of every meter (customers then transformers)
    ctx: np.ndarray  # local transformer column per customer (n_tx for off-grid)
    supply_cols: np.ndarray  # ctx, then the transformers' own columns
    vdrop_all: np.ndarray  # volts of drop at full utilisation (0 for transformer meters)
    seg: np.ndarray  # reduceat offsets of each transformer's customers
    p_credit: np.ndarray
    credit_median: np.ndarray
    tx_feeder: np.ndarray
    tx_region: np.ndarray
    tx_kva: np.ndarray
    tx_base: np.ndarray
    tx_slope: np.ndarray
    tx_hook: np.ndarray
    tx_v0: np.ndarray
    register0: np.ndarray  # customers then transformers


@dataclass(frozen=True)
class _Shared:
    """Per-day values common to every gateway."""

    local: LocalDay
    weather: tuple[np.ndarray, np.ndarray, np.ndarray]
    base_tab: np.ndarray
    cool_tab: np.ndarray
    hook_tab: np.ndarray
    feeder_on: np.ndarray
    tx_on: np.ndarray
    prev_tx_supply: np.ndarray  # (transformers,) supply in the interval before the day


class Fleet:
    def __init__(self, cfg: FleetConfig) -> None:
        self.cfg = cfg
        self.grid = TimeGrid(cfg)
        self.topology: Topology = build(cfg)
        self.weather = Weather(cfg, self.grid)
        self.consumption = ConsumptionModel(cfg, self.weather.duty_ref)
        self.supply = SupplyModel(cfg, self.topology)
        self.credit = CreditModel(cfg)
        self.plan = make_plan(cfg, self.topology)
        self.injector = TheftInjector(cfg, self.topology, self.plan)
        self._static = [self._make_static(g) for g in range(len(self.topology.gateways))]
        hook = np.asarray(HOOKUP_WEIGHTS, np.float64)
        self._hook_weights = hook / hook.sum() * (cfg.interval_s / 3600.0)

    # ------------------------------------------------------------------ public surface
    @property
    def gateway_ids(self) -> list[str]:
        return [g.gateway_id for g in self.topology.gateways]

    @property
    def total_intervals(self) -> int:
        return self.grid.total_intervals

    def meter_count(self, gateway: int | str | None = None) -> int:
        gws = self._resolve(gateway)
        return sum(len(self._static[g].meter_ids) for g in gws)

    def registry(self) -> Registry:
        return build_registry(self.cfg, self.topology)

    def supply_info(self) -> dict[str, Any]:
        return supply_info(self.topology, self.supply.stages)

    def ground_truth(self) -> list[dict[str, Any]]:
        return ground_truth(self.cfg, self.topology, self.plan)

    def meter_ids_for_gateway(self, g: int | str) -> list[str]:
        (index,) = self._resolve(g)
        return [str(m) for m in self._static[index].meter_ids]

    def chunks(
        self, gateway: int | str | None = None, chunk_intervals: int = 48
    ) -> Iterator[Chunk]:
        """Readings in time order, ``chunk_intervals`` intervals (x all meters) at a time.
        ``gateway``: index (0-based) or id ("gw-01"); None for every meter."""
        if chunk_intervals < 1:
            raise ValueError("chunk_intervals must be >= 1")
        gws = self._resolve(gateway)
        registers = {g: self._static[g].register0.copy() for g in gws}
        pieces: list[tuple[DayBlock, int, int]] = []
        have = 0
        ipd, total = self.grid.ipd, self.grid.total_intervals
        for day in range(self.cfg.day_blocks):
            shared = self._shared(day)
            block = DayBlock.concat([self._day_block(day, g, shared, registers) for g in gws])
            del shared
            pos, end = 0, min(ipd, total - day * ipd)
            while pos < end:
                take = min(end - pos, chunk_intervals - have)
                pieces.append((block, pos, pos + take))
                pos += take
                have += take
                if have == chunk_intervals:
                    yield Chunk.from_pieces(pieces, self.cfg.interval_s)
                    pieces, have = [], 0
            del block  # let the consumer's chunk be the only owner
        if pieces:
            yield Chunk.from_pieces(pieces, self.cfg.interval_s)

    def arrays(
        self, gateway: int | str | None = None
    ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """The whole simulation in memory as (meter_ids, ts, {field: (intervals, meters)}):
        for small fleets (tests, notebooks). Fields as in Chunk (label as codes)."""
        ids = np.array(
            self.meter_ids_for_gateway(gateway)
            if gateway is not None
            else [m for g in self.gateway_ids for m in self.meter_ids_for_gateway(g)],
            dtype=object,
        )
        parts: dict[str, list[np.ndarray]] = {}
        stamps = []
        for chunk in self.chunks(gateway=gateway, chunk_intervals=self.grid.ipd):
            n_t = len(chunk) // len(ids)
            stamps.append(chunk.ts[:: len(ids)])
            for name in BLOCK_FIELDS:
                parts.setdefault(name, []).append(getattr(chunk, name).reshape(n_t, len(ids)))
        return ids, np.concatenate(stamps), {k: np.concatenate(v) for k, v in parts.items()}

    # ------------------------------------------------------------------ internals
    def _resolve(self, gateway: int | str | None) -> list[int]:
        n = len(self.topology.gateways)
        if gateway is None:
            return list(range(n))
        if isinstance(gateway, str):
            if gateway not in self.gateway_ids:
                raise KeyError(f"unknown gateway {gateway!r}; known: {self.gateway_ids}")
            return [self.gateway_ids.index(gateway)]
        if not 0 <= gateway < n:
            raise IndexError(f"gateway index {gateway} out of range 0..{n - 1}")
        return [int(gateway)]

    def _make_static(self, g: int) -> _Static:
        topo, cfg = self.topology, self.cfg
        gw = topo.gateways[g]
        cust, txs = gw.customers, gw.transformers
        n_grid = gw.n_grid
        classes = cfg.classes
        klass = topo.cust_class[cust]
        ctx = np.full(len(cust), len(txs), np.int64)
        if len(txs):
            ctx[:n_grid] = topo.cust_tx[cust[:n_grid]] - txs[0]
        seg = (topo.tx_first[txs] - (topo.tx_first[txs[0]] if len(txs) else 0)).astype(np.int64)
        ipd = cfg.intervals_per_day
        gaps = np.array([c.credit_gaps_per_day for c in classes])[klass]
        median_h = np.array([c.credit_gap_median_h for c in classes])[klass]
        reg0_c = topo.cust_register0[cust]
        reg0_x = np.add.reduceat(reg0_c[:n_grid], seg) * 1.1 if len(txs) else np.zeros(0)
        return _Static(
            index=g,
            meter_ids=np.concatenate(
                [topo.cust_ids[cust], np.array([topo.tx_meter_ids[x] for x in txs], object)]
            ),
            n_cust=len(cust),
            n_grid=n_grid,
            txs=txs,
            key=self.consumption.key(topo.cust_region[cust], klass),
            klass=klass,
            level=topo.cust_level[cust],
            region_all=np.concatenate([topo.cust_region[cust], topo.tx_region[txs]]),
            ctx=ctx,
            seg=seg,
            p_credit=np.where(topo.cust_prepaid[cust], gaps, 0.0),
            credit_median=median_h * ipd / 24.0,
            supply_cols=np.concatenate([ctx, np.arange(len(txs))]),
            vdrop_all=np.concatenate(
                [
                    np.where(
                        np.array([c.reports_voltage for c in classes])[klass],
                        topo.cust_vdrop[cust],
                        np.nan,
                    ),
                    np.zeros(len(txs)),
                ]
            ),
            tx_feeder=topo.tx_feeder[txs],
            tx_region=topo.tx_region[txs],
            tx_kva=topo.tx_kva[txs],
            tx_base=topo.tx_loss_base[txs],
            tx_slope=topo.tx_loss_slope[txs],
            tx_hook=topo.tx_unmetered_kwh_day[txs],
            tx_v0=topo.tx_v0[txs],
            register0=np.concatenate([reg0_c, reg0_x]),
        )

    def _shared(self, day: int) -> _Shared:
        local = self.grid.local(day)
        temp, hum, wind = self.weather.day(day, local)
        base_tab, cool_tab = self.consumption.tables(local, cooling_duty(temp, hum))
        feeder_on, tx_on = self.supply.day(day, local)
        if day > 0:
            prev_f, prev_x = self.supply.day(day - 1, self.grid.local(day - 1))
            prev = prev_f[-1, self.topology.tx_feeder] & prev_x[-1]
        else:
            prev = np.ones(len(self.topology.tx_ids), bool)
        hook_tab = self._hook_weights[local.hour]
        return _Shared(
            local=local,
            weather=(temp, hum, wind),
            base_tab=base_tab,
            cool_tab=cool_tab,
            hook_tab=hook_tab,
            feeder_on=feeder_on,
            tx_on=tx_on,
            prev_tx_supply=prev,
        )

    def _day_block(
        self, day: int, g: int, sh: _Shared, registers: dict[int, np.ndarray]
    ) -> DayBlock:
        cfg, st = self.cfg, self._static[g]
        ipd, n_c, n_x = self.grid.ipd, st.n_cust, len(st.txs)
        n = n_c + n_x
        take = np.take

        # Supply: a customer is fed when its feeder and its transformer are (off-grid: always).
        tx_sup = take(sh.feeder_on, st.tx_feeder, axis=1) & take(sh.tx_on, st.txs, axis=1)
        prev = np.vstack([sh.prev_tx_supply[st.txs][None, :], tx_sup[:-1]])
        pickup = np.ones((ipd, n_x + 1))
        pickup[:, :n_x] += cfg.cold_load_pickup * (tx_sup & ~prev)
        sup_ext = np.ones((ipd, n_x + 1), bool)
        sup_ext[:, :n_x] = tx_sup
        supply_on = take(sup_ext, st.supply_cols, axis=1)
        supply_c = supply_on[:, :n_c]
        no_credit = self.credit.day(day, g, st.p_credit, st.credit_median)
        operating = supply_c & ~no_credit

        # True consumption, then what the meters report.
        gen = rng.stream(cfg.seed, rng.CONSUMPTION, day, g)
        true = np.empty((ipd, n))
        true_c = true[:, :n_c]
        true_c[...] = self.consumption.energy(
            gen, st.key, st.klass, st.level, sh.base_tab, sh.cool_tab
        )
        true_c *= take(pickup, st.ctx, axis=1)
        true_c *= operating
        kwh = np.empty((ipd, n))
        kwh[:, :n_c] = true_c
        label = np.zeros((ipd, n), np.uint8)
        flags = np.zeros((ipd, n), np.uint16)
        rollbacks = self.injector.apply(
            day, g, true_c, operating, sh.local.hour, kwh[:, :n_c], label[:, :n_c], flags[:, :n_c]
        )
        flags[:, :n_c][no_credit] |= NO_CREDIT
        del no_credit, operating

        # Transformers: customers' true load + unmetered hook-ups + technical loss.
        delivered = (
            np.add.reduceat(true[:, : st.n_grid], st.seg, axis=1) if n_x else np.zeros((ipd, 0))
        )
        gen_x = rng.stream(cfg.seed, rng.UNMETERED, day, g)
        hook_noise = np.exp(0.3 * gen_x.standard_normal((ipd, n_x)) - 0.045)
        hook = take(sh.hook_tab, st.tx_region, axis=1) * st.tx_hook * hook_noise * tx_sup
        delivered += hook
        util = losses.utilisation(delivered, st.tx_kva, cfg.interval_s)
        loss = losses.technical_loss(delivered, util, st.tx_base, st.tx_slope, cfg.loss_max)
        kwh[:, n_c:] = delivered + loss
        true[:, n_c:] = kwh[:, n_c:]
        loss_all = np.zeros((ipd, n))
        loss_all[:, n_c:] = loss
        hook_all = np.zeros((ipd, n))
        hook_all[:, n_c:] = hook

        # Registers: cumulative, carried from day to day; a rollback subtracts from then on.
        register = np.cumsum(kwh, axis=0)
        register += registers[g]
        for col, k, frac in zip(
            rollbacks[0].tolist(), rollbacks[1].tolist(), rollbacks[2].tolist(), strict=True
        ):
            register[k:, col] -= frac * register[k, col]
        registers[g] = register[-1].copy()

        # Voltage: the transformer's LV busbar sags with load, customers further down the line.
        gen_v = rng.stream(cfg.seed, rng.VOLTAGE, day, g)
        v_ext = np.full((ipd, n_x + 1), np.nan)
        v_ext[:, :n_x] = st.tx_v0 - 12.0 * util + gen_v.normal(0.0, 0.8, (ipd, n_x))
        u_ext = np.zeros((ipd, n_x + 1))
        u_ext[:, :n_x] = util
        voltage = take(v_ext, st.supply_cols, axis=1)
        voltage -= take(u_ext, st.supply_cols, axis=1) * st.vdrop_all
        voltage[:, :n_c] += 1.5 * gen_v.standard_normal((ipd, n_c), dtype=np.float32)
        np.clip(voltage, V_MIN, V_MAX, out=voltage)
        voltage = np.round(voltage, 1, out=voltage)
        voltage[~supply_on] = np.nan

        temp, hum, wind = sh.weather
        arrays = {
            "kwh": kwh,
            "register_kwh": register,
            "voltage_v": voltage,
            "temperature_c": take(temp, st.region_all, axis=1),
            "humidity_pct": take(hum, st.region_all, axis=1),
            "wind_ms": take(wind, st.region_all, axis=1),
            "supply_on": supply_on,
            "flags": flags,
            "label_code": label,
            "true_kwh": true,
            "loss_kwh": loss_all,
            "unmetered_kwh": hook_all,
        }
        return DayBlock(meter_ids=st.meter_ids, ends=self.grid.ends(day), arrays=arrays)
