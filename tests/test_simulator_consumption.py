"""Consumption statistics of generated fleets against the configured class ranges."""

from __future__ import annotations

import numpy as np
import pytest

from simulator import Fleet, FleetConfig
from simulator.timegrid import SUNDAY, WEEKDAY

CFG = FleetConfig(
    meters=2500,
    days=14,
    gateways=2,
    seed=21,
    theft_share=0.0,
    fault_share=0.0,
    shedding="none",
    feeder_faults_per_day=0.0,
    transformer_faults_per_day=0.0,
    start="2026-03-02",
)


@pytest.fixture(scope="module")
def fleet_data():
    fleet = Fleet(CFG)
    ids, ts, a = fleet.arrays()
    meters = {m["meter_id"]: m for m in fleet.registry().meters}
    return fleet, ids, ts, a, meters


def _class_columns(ids, meters, name: str) -> np.ndarray:
    return np.array([meters[m]["customer_class"] == name for m in ids])


def _full_days(fleet, a) -> np.ndarray:
    """(days, meters) True where the meter had supply and credit all day."""
    ipd = fleet.grid.ipd
    ok = a["supply_on"] & ((a["flags"] & 16) == 0)
    return ok.reshape(fleet.cfg.days, ipd, -1).all(axis=1)


@pytest.mark.parametrize("spec", CFG.classes, ids=lambda c: c.name)
def test_daily_energy_per_class_is_in_its_configured_range(fleet_data, spec) -> None:
    fleet, ids, ts, a, meters = fleet_data
    cols = _class_columns(ids, meters, spec.name)
    assert cols.sum() >= 40
    daily = a["true_kwh"][:, cols].reshape(fleet.cfg.days, fleet.grid.ipd, -1).sum(axis=1)
    full = _full_days(fleet, a)[:, cols]
    per_meter = np.nanmean(np.where(full, daily, np.nan), axis=0)
    lo, hi = spec.daily_kwh
    assert lo <= np.nanmean(per_meter) <= hi
    inside = (per_meter >= 0.7 * lo) & (per_meter <= 1.3 * hi)
    assert inside[~np.isnan(per_meter)].mean() > 0.9


@pytest.mark.parametrize("spec", CFG.classes, ids=lambda c: c.name)
def test_evening_peak_share_per_class_is_in_its_configured_range(fleet_data, spec) -> None:
    fleet, ids, ts, a, meters = fleet_data
    cols = _class_columns(ids, meters, spec.name)
    offsets = fleet.grid.offsets_s
    regions = [fleet.topology.region_ids.index(meters[m]["region"]) for m in ids]
    peak = np.zeros(a["kwh"].shape, bool)
    for r, off in enumerate(offsets):
        hour = ((ts - fleet.cfg.interval_s + off) % 86400) // 3600
        sel = np.array(regions) == r
        peak[:, sel] = ((hour >= 17) & (hour < 22))[:, None]
    energy = a["true_kwh"][:, cols]
    share = energy[peak[:, cols]].sum() / energy.sum()
    lo, hi = spec.evening_share
    assert lo <= share <= hi, (spec.name, share)


def test_weekends_differ_from_weekdays_as_configured(fleet_data) -> None:
    fleet, ids, ts, a, meters = fleet_data
    ipd, days = fleet.grid.ipd, fleet.cfg.days
    # The Dakar region is at UTC+0: its local days are the UTC day blocks.
    kinds = np.array([fleet.grid.local(d).daytype[0, 0] for d in range(days)])
    assert (kinds == SUNDAY).sum() >= 2 and (kinds == WEEKDAY).sum() >= 8
    dakar = np.array([meters[m]["region"] == "REG-DKR" for m in ids])
    for name, expect_lower in (
        ("commercial", True),
        ("industrial_small", True),
        ("residential_urban", False),
    ):
        cols = _class_columns(ids, meters, name) & dakar
        daily = a["true_kwh"][:, cols].reshape(days, ipd, -1).sum(axis=(1, 2))
        ratio = daily[kinds == SUNDAY].mean() / daily[kinds == WEEKDAY].mean()
        assert (ratio < 0.7) if expect_lower else (ratio > 0.9), (name, ratio)


def test_weather_is_plausible_and_drives_cooling_load(fleet_data) -> None:
    fleet, ids, ts, a, meters = fleet_data
    t, h, w = a["temperature_c"], a["humidity_pct"], a["wind_ms"]
    assert 5 < t.min() and t.max() < 45
    assert 5 <= h.min() and h.max() <= 100 and 0 <= w.min() and w.max() < 25
    # Hourly temperature peaks in the afternoon (local), not at night.
    dakar = [i for i, m in enumerate(ids) if meters[m]["region"] == "REG-DKR"][0]
    hour = ((ts - fleet.cfg.interval_s) % 86400) // 3600
    by_hour = np.array([t[hour == k, dakar].mean() for k in range(24)])
    assert 12 <= by_hour.argmax() <= 17 and (by_hour.argmin() <= 7 or by_hour.argmin() >= 22)
    # Commercial midday load rises with temperature (air conditioning).
    cols = np.array([meters[m]["customer_class"] == "commercial" for m in ids])
    midday = (hour >= 11) & (hour < 16)
    load = a["true_kwh"][midday][:, cols].mean(axis=1)
    temp = t[midday][:, cols].mean(axis=1)
    assert np.corrcoef(load, temp)[0, 1] > 0.3


def test_transformer_meters_read_more_than_their_customers(fleet_data) -> None:
    fleet, ids, ts, a, meters = fleet_data
    tx = np.array([m.startswith("TX-") for m in ids])
    total_tx = a["kwh"][:, tx].sum()
    grid_cust = np.array(
        [
            meters[m]["meter_role"] == "customer" and meters[m]["transformer_id"] is not None
            for m in ids
        ]
    )
    total_cust = a["kwh"][:, grid_cust].sum()
    assert 1.02 < total_tx / total_cust < 1.2


def _style(style: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(kwh, validity, class per meter) of the honest customers of a two-week fleet of
    ``style`` (seed fixed: the same customers and outages for every style but
    ``commercial``)."""
    from ml.dataset import from_fleet

    data = from_fleet(FleetConfig.for_style(style, meters=400, days=14, seed=5, theft_share=0.0))
    honest = data.customers & (data.label_code == 0).all(axis=0)
    return data.kwh[:, honest], data.valid[:, honest], data.customer_class[honest]


def test_load_styles_keep_the_energy_and_change_its_shape() -> None:
    """``bursty`` draws each meter's expected energy with two appliances at fixed powers
    (mostly near zero, blocks at a power); ``commercial`` is shops and workshops with a
    smooth profile; an unknown style is refused."""
    household, _, _ = _style("household")
    bursty, valid, _ = _style("bursty")
    commercial, _, classes = _style("commercial")
    daily_h, daily_b = household.sum(0) / 14, bursty.sum(0) / 14
    assert np.median(daily_b / daily_h) == pytest.approx(1.0, abs=0.08)
    near_zero = (bursty < 0.1 * bursty.mean(0))[valid].mean()
    assert near_zero > 0.6 and (household < 0.1 * household.mean(0))[valid].mean() < 0.05
    # the rest comes in blocks at an appliance's power: a reading far above standby is most
    # often next to another such reading at the same power
    on = bursty > 0.5 * bursty.mean(0)
    same = on[1:] & on[:-1] & np.isclose(bursty[1:], bursty[:-1], rtol=0.1)
    assert same.sum() > 0.3 * on[1:].sum()
    assert set(classes.tolist()) == {"commercial", "industrial_small"}

    def roughness(x: np.ndarray) -> float:
        return float(np.median(np.abs(np.diff(np.log(x + 1e-3), axis=0))))

    assert roughness(commercial) < 0.5 * roughness(household)
    with pytest.raises(ValueError, match="load_style"):
        FleetConfig(load_style="spiky")
