"""Fleet-level properties: determinism, chunking, gateways, labels, registers, energy balance."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import defaultdict

import numpy as np
import pytest

from simulator import (
    EVENT_LABELS,
    FAULT_LABELS,
    FLAG_BIT,
    FLAG_NAMES,
    LABEL_CODE,
    LABEL_NAMES,
    THEFT_LABELS,
    Fleet,
    FleetConfig,
)
from simulator.chunk import BLOCK_FIELDS

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
NAMES = np.array(LABEL_NAMES, dtype=object)
TAMPER_BITS = (
    FLAG_BIT["cover_open"]
    | FLAG_BIT["magnetic"]
    | FLAG_BIT["reverse_flow"]
    | FLAG_BIT["clock_reset"]
)


def _concat(chunks: list) -> dict[str, np.ndarray]:
    keys = (*BLOCK_FIELDS, "meter_id", "ts", "label")
    return {k: np.concatenate([getattr(c, k) for c in chunks]) for k in keys}


def _equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return all(np.array_equal(a[k], b[k], equal_nan=a[k].dtype.kind == "f") for k in a)


SMALL = FleetConfig(meters=400, days=2, gateways=2, seed=11, theft_share=0.3)


@pytest.fixture(scope="module")
def theft() -> tuple[Fleet, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    fleet = Fleet(
        FleetConfig(meters=1200, days=4, gateways=3, seed=3, theft_share=0.4, fault_share=0.1)
    )
    ids, ts, arrays = fleet.arrays()
    return fleet, ids, ts, arrays


def test_same_seed_same_data_other_seed_other_data() -> None:
    a = _concat(list(Fleet(SMALL).chunks()))
    b = _concat(list(Fleet(SMALL).chunks()))
    assert _equal(a, b)
    c = _concat(list(Fleet(SMALL.with_(seed=12)).chunks()))
    assert len(c["kwh"]) != len(a["kwh"]) or not np.array_equal(a["kwh"], c["kwh"])
    assert Fleet(SMALL).registry() == Fleet(SMALL).registry()


def test_chunks_do_not_depend_on_chunk_size_nor_on_gateway_selection() -> None:
    fleet = Fleet(SMALL)
    whole = _concat(list(fleet.chunks(chunk_intervals=48)))
    odd = list(fleet.chunks(chunk_intervals=7))
    assert [len(np.unique(c.ts)) for c in odd[:-1]] == [7] * (len(odd) - 1)
    assert _equal(whole, _concat(odd))
    for g in range(2):
        part = _concat(list(fleet.chunks(gateway=g, chunk_intervals=5)))
        sel = np.isin(whole["meter_id"], fleet.meter_ids_for_gateway(g))
        assert _equal({k: v[sel] for k, v in whole.items()}, part)
    by_id = _concat(list(fleet.chunks(gateway="gw-02")))
    assert set(by_id["meter_id"]) == set(fleet.meter_ids_for_gateway(1))


def test_chunks_are_time_ordered_with_every_meter_each_interval() -> None:
    fleet = Fleet(SMALL)
    n = fleet.meter_count()
    for chunk in fleet.chunks(chunk_intervals=5):
        ts = chunk.ts.reshape(-1, n)
        assert (ts == ts[:, :1]).all()
        assert (np.diff(ts[:, 0]) == SMALL.interval_s).all()
        assert len(set(chunk.meter_id[:n])) == n


@pytest.mark.parametrize("interval_s", [900, 1800, 3600])
def test_ts_is_the_end_of_the_interval_for_each_interval_length(interval_s: int) -> None:
    fleet = Fleet(FleetConfig(meters=120, days=2, interval_s=interval_s, seed=2))
    ids, ts, arrays = fleet.arrays()
    start = fleet.cfg.start_epoch
    assert ts[0] == start + interval_s
    assert ts[-1] == start + 2 * 86400
    assert len(ts) == 2 * 86400 // interval_s
    assert arrays["kwh"].shape == (len(ts), len(ids))
    # The same customers use about the same energy whatever the interval length.
    daily = arrays["true_kwh"][:, :120].sum() / 2 / 120
    assert 2.0 < daily < 40.0


def test_fractional_days_stop_mid_day_and_match_the_longer_run() -> None:
    short = Fleet(FleetConfig(meters=100, days=1.25, seed=6))
    ids, ts, a = short.arrays()
    assert len(ts) == 60 and ts[-1] == short.cfg.start_epoch + 30 * 3600
    _, ts2, b = Fleet(FleetConfig(meters=100, days=2, seed=6)).arrays()
    assert np.array_equal(ts2[:60], ts) and np.array_equal(b["kwh"][:60], a["kwh"])
    assert sum(len(c) for c in short.chunks(chunk_intervals=7)) == 60 * len(ids)
    with pytest.raises(ValueError):
        FleetConfig(days=0.001)


def test_gateways_partition_meters_and_keep_transformers_with_their_customers() -> None:
    fleet = Fleet(FleetConfig(meters=900, days=1, gateways=3, seed=4))
    reg = fleet.registry()
    by_gw = {g: set(fleet.meter_ids_for_gateway(g)) for g in range(3)}
    all_ids = [m["meter_id"] for m in reg.meters]
    assert len(all_ids) == len(set(all_ids)) == sum(len(s) for s in by_gw.values())
    assert set().union(*by_gw.values()) == set(all_ids)
    gw_of_tx = {
        m["transformer_id"]: m["gateway_id"] for m in reg.meters if m["meter_role"] == "transformer"
    }
    for m in reg.meters:
        if m["transformer_id"]:
            assert m["gateway_id"] == gw_of_tx[m["transformer_id"]]
        idx = int(m["gateway_id"].split("-")[1]) - 1
        assert m["meter_id"] in by_gw[idx]
    with pytest.raises(IndexError):
        fleet.meter_ids_for_gateway(3)
    with pytest.raises(ValueError, match="no meters"):
        Fleet(FleetConfig(meters=20, gateways=5))


def test_registry_rows_match_the_sql_columns_and_reference_existing_assets() -> None:
    fleet = Fleet(FleetConfig(meters=700, days=1, gateways=2, seed=9))
    reg = fleet.registry()
    meter_keys = {
        "meter_id",
        "meter_role",
        "customer_class",
        "load_shape",
        "tariff",
        "transformer_id",
        "feeder_id",
        "region",
        "timezone",
        "latitude",
        "longitude",
        "gateway_id",
        "installed_at",
    }
    asset_keys = {
        "asset_id",
        "asset_type",
        "parent_id",
        "name",
        "rated_kva",
        "latitude",
        "longitude",
    }
    seen: dict[str, str] = {}
    for a in reg.assets:
        assert set(a) == asset_keys and ID_RE.match(a["asset_id"])
        assert a["parent_id"] is None or a["parent_id"] in seen  # parents come first
        seen[a["asset_id"]] = a["asset_type"]
    assert [a["asset_type"] for a in reg.assets] == sorted(
        (a["asset_type"] for a in reg.assets), key=["region", "feeder", "transformer"].index
    )
    roles = defaultdict(int)
    for m in reg.meters:
        assert set(m) == meter_keys and ID_RE.match(m["meter_id"]) and ID_RE.match(m["gateway_id"])
        roles[m["meter_role"]] += 1
        if m["meter_role"] == "transformer":
            assert m["meter_id"].startswith("TX-") and m["tariff"] is None
            assert m["load_shape"] is None
            assert seen[m["transformer_id"]] == "transformer"
        else:
            assert m["tariff"] in ("prepaid", "postpaid")
            assert m["load_shape"] == "continuous"  # a household fleet
            if m["customer_class"] == "solar_home_payg":
                assert m["transformer_id"] is None and m["tariff"] == "prepaid"
            else:
                assert seen[m["transformer_id"]] == "transformer"
                assert seen[m["feeder_id"]] == "feeder"
        assert seen[m["region"]] == "region"
    assert roles["customer"] == 700 and roles["transformer"] >= 700 // 80


def test_theft_prevalence_follows_the_configuration() -> None:
    fleet = Fleet(FleetConfig(meters=2000, days=1, seed=5))
    truth = fleet.ground_truth()
    grid = sum(
        1 for m in fleet.registry().meters if m["meter_role"] == "customer" and m["transformer_id"]
    )
    thieves = [t for t in truth if t["label"] in THEFT_LABELS]
    faults = [t for t in truth if t["label"] in FAULT_LABELS]
    assert abs(len(thieves) - round(0.06 * grid)) <= 1
    assert abs(len(faults) - round(0.01 * grid)) <= 1
    assert all(t["meter_id"].startswith("M-") for t in thieves + faults)


def test_every_altered_reading_is_labelled_and_every_label_marks_a_change(theft) -> None:
    fleet, ids, ts, a = theft
    kwh, true, code, flags = a["kwh"], a["true_kwh"], a["label_code"], a["flags"]
    altered = kwh != true
    assert altered.any()
    assert not (altered & (code == 0)).any()
    names = NAMES[code]
    event = np.isin(names, list(EVENT_LABELS))
    flagged = (flags & TAMPER_BITS) > 0
    assert not ((code > 0) & ~altered & ~event & ~flagged).any()
    # tamper_only: a flag, no change in energy.
    only = names == "tamper_only"
    assert only.any() and (kwh[only] == true[only]).all() and flagged[only].all()
    # Labels appear only on meters listed in the ground truth, with that very label.
    truth = {t["meter_id"]: t["label"] for t in fleet.ground_truth()}
    for j in np.flatnonzero((code > 0).any(axis=0)):
        assert set(names[:, j][code[:, j] > 0]) == {truth[ids[j]]}
    honest = np.array([i not in truth for i in ids])
    assert (kwh[:, honest] == true[:, honest]).all()
    # Every attack type of the plan shows up somewhere in this fleet.
    assert set(names[code > 0]) == set(LABEL_NAMES[1:])


def test_attack_functions_are_applied_as_defined(theft) -> None:
    fleet, ids, ts, a = theft
    kwh, true, code, sup = a["kwh"], a["true_kwh"], a["label_code"], a["supply_on"]
    flags = a["flags"]
    operating = sup & ((flags & FLAG_BIT["no_credit"]) == 0)
    ipd = fleet.grid.ipd
    checked = 0
    fixed: dict[int, float] = {}  # h1_fixed: one factor per meter, every day after its onset
    for j in range(len(ids)):
        for d in range(fleet.cfg.days):
            day = slice(d * ipd, (d + 1) * ipd)
            c, x, y, op = code[day, j], true[day, j], kwh[day, j], operating[day, j]
            if not c.any() or not op.all():
                continue
            name = LABEL_NAMES[int(c.max())]
            if name == "h5":
                assert np.allclose(y, x.mean())
            elif name == "h6":
                assert np.allclose(y, x[::-1])
            elif name == "zero_report":
                assert (y == 0).all()
            elif name == "h1":
                ratio = y / x
                assert np.allclose(ratio, ratio[0]) and 0.1 <= ratio[0] <= 0.8
            elif name == "h1_fixed":
                started = c > 0
                use = started & (x > 0)
                ratio = y[use] / x[use]
                assert np.allclose(ratio, fixed.setdefault(j, float(ratio[0])))
                assert 0.1 <= ratio[0] <= 0.8 and started[np.argmax(started) :].all()
            elif name in ("h3", "h4"):
                gamma = y / (x if name == "h3" else x.mean())
                assert ((gamma >= 0.1 - 1e-9) & (gamma <= 0.8 + 1e-9)).all()
            elif name == "cap":
                assert y.max() < x.max() and np.allclose(y[c > 0], y.max())
            else:
                continue
            checked += 1
    assert checked >= 10 and fixed
    for j in fixed:  # every day after the onset day carries it (not 85 % of them)
        days = code[:, j].reshape(-1, ipd).max(axis=1) > 0
        assert days[np.argmax(days) :].all()


def test_outages_read_zero_are_marked_and_not_labelled(theft) -> None:
    fleet, ids, ts, a = theft
    off = ~a["supply_on"]
    assert 0.01 < off.mean() < 0.6
    assert (a["kwh"][off] == 0).all() and (a["true_kwh"][off] == 0).all()
    assert (a["label_code"][off] == 0).all()
    assert np.isnan(a["voltage_v"][off]).all()
    # A transformer off means all its customers off.
    reg = {m["meter_id"]: m for m in fleet.registry().meters}
    col = {m: i for i, m in enumerate(ids)}
    tx_col = {reg[m]["transformer_id"]: i for m, i in col.items() if m.startswith("TX-")}
    for m, i in col.items():
        if reg[m]["meter_role"] == "customer" and reg[m]["transformer_id"]:
            assert np.array_equal(
                a["supply_on"][:, i], a["supply_on"][:, tx_col[reg[m]["transformer_id"]]]
            )


def test_prepaid_without_credit_reads_zero_with_supply_on_and_the_flag(theft) -> None:
    fleet, ids, ts, a = theft
    no_credit = (a["flags"] & FLAG_BIT["no_credit"]) > 0
    assert no_credit.any()
    assert (a["kwh"][no_credit] == 0).all() and (a["label_code"][no_credit] == 0).all()
    assert a["supply_on"][no_credit].mean() > 0.5
    tariffs = {m["meter_id"]: m["tariff"] for m in fleet.registry().meters}
    assert {tariffs[ids[j]] for j in np.flatnonzero(no_credit.any(axis=0))} == {"prepaid"}
    # Every zero an honest meter reports is explained by an outage or by no credit.
    honest_zero = (a["kwh"] == 0) & (a["label_code"] == 0)
    assert (~a["supply_on"] | no_credit)[honest_zero].all()


def test_registers_accumulate_kwh_and_drop_only_at_labelled_rollbacks(theft) -> None:
    fleet, ids, ts, a = theft
    reg, kwh = a["register_kwh"], a["kwh"]
    step = np.diff(reg, axis=0)
    rollback = NAMES[a["label_code"][1:]] == "register_rollback"
    assert rollback.any() and (step[rollback] < 0).all()
    assert np.allclose(step[~rollback], kwh[1:][~rollback], atol=1e-6)
    assert (reg >= 0).all()


def test_transformer_energy_is_customers_plus_losses_plus_theft(theft) -> None:
    fleet, ids, ts, a = theft
    reg = {m["meter_id"]: m for m in fleet.registry().meters}
    members: dict[str, list[int]] = defaultdict(list)
    for j, m in enumerate(ids):
        if reg[m]["meter_role"] == "customer" and reg[m]["transformer_id"]:
            members[reg[m]["transformer_id"]].append(j)
    thieves = {t["meter_id"] for t in fleet.ground_truth() if t["label"] in THEFT_LABELS}
    fractions, utilisation = [], []
    kva = {x["asset_id"]: x["rated_kva"] for x in fleet.registry().assets}
    hours = fleet.cfg.interval_s / 3600
    for j, m in enumerate(ids):
        if not m.startswith("TX-"):
            continue
        cust = members[reg[m]["transformer_id"]]
        billed = a["kwh"][:, cust].sum(axis=1)
        stolen = (a["true_kwh"][:, cust] - a["kwh"][:, cust]).sum(axis=1)
        loss, hook = a["loss_kwh"][:, j], a["unmetered_kwh"][:, j]
        supplied = a["kwh"][:, j]
        assert np.allclose(supplied, billed + loss + stolen + hook, rtol=1e-9, atol=1e-9)
        if not any(ids[c] in thieves for c in cust):
            assert np.allclose(stolen, 0)
        on = supplied > 0
        delivered = supplied[on] - loss[on]
        fractions.append(loss[on] / delivered)
        utilisation.append(delivered / hours / (kva[reg[m]["transformer_id"]] * 0.9))
    frac, util = np.concatenate(fractions), np.concatenate(utilisation)
    assert frac.min() >= 0.02 - 1e-9 and frac.max() <= 0.15 + 1e-9
    assert 0.03 < np.median(frac) < 0.12
    assert np.corrcoef(frac, util)[0, 1] > 0.3  # losses grow with load


def test_meter_ids_and_flags_fit_the_wire(theft) -> None:
    from edge_agent.wire import Reading

    fleet, ids, ts, a = theft
    assert all(ID_RE.match(m) for m in ids)
    assert all(re.match(r"^[a-z][a-z0-9_]{0,31}$", f) for f in FLAG_NAMES)
    chunk = next(fleet.chunks(chunk_intervals=4))
    rows = chunk.to_readings()
    for row in rows:
        Reading(**row)
    assert any(r["supply"] == "off" for r in rows) or any("voltage_v" in r for r in rows)


def test_labelled_codes_match_names() -> None:
    assert LABEL_NAMES[0] == "" and LABEL_CODE["h1"] == 1
    assert set(THEFT_LABELS) | set(FAULT_LABELS) == set(LABEL_NAMES[1:])
    assert {
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "bypass",
        "zero_report",
        "cap",
        "stuck",
        "spike",
        "tamper_only",
        "register_rollback",
    } <= set(LABEL_NAMES)
    assert {"cover_open", "magnetic", "reverse_flow", "clock_reset", "no_credit"} <= set(FLAG_NAMES)


def test_simulator_imports_with_numpy_and_stdlib_only() -> None:
    code = (
        "import sys; import simulator, simulator.fleet, simulator.seed, simulator.writers, "
        "simulator.cli, simulator.registry_db\n"
        "bad = {'pyarrow', 'psycopg', 'pydantic', 'pandas', 'scipy'} & "
        "{m.split('.')[0] for m in sys.modules}\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
