from __future__ import annotations

import math
import subprocess
import sys
import time

import numpy as np
import pytest

import edge_agent.features as features_mod
from edge_agent.features import (
    FEATURE_NAMES,
    compute_features,
    compute_features_grouped,
    flag_bits_from_names,
    history_window_s,
    slots_per_day,
    supplied,
)
from edge_agent.long_memory import fold, local_day_and_hour
from ml.synthetic import make_readings

BITS = flag_bits_from_names(["cover_open", "magnetic", "reverse_flow", "clock_reset", "no_credit"])
COL = {name: i for i, name in enumerate(FEATURE_NAMES)}
CONSUMPTION = [
    "kwh_vs_same_hour_7d",
    "kwh_vs_24h",
    "kwh_vs_7d",
    "mean_24h_vs_usual",
    "zero_run_log_h",
    "rough_24h",
    "flatness_24h",
    "day_spread_6d",
]
LONG_MEMORY = [COL["mean_24h_vs_usual"]]
T0 = 1_767_225_600  # midnight UTC


def meter(days: int, interval_s: int = 1800, kwh: float = 1.0) -> dict[str, np.ndarray]:
    """A perfectly regular meter: ``kwh`` every interval, supply on, register consistent."""
    n = days * 86400 // interval_s
    ts = T0 + interval_s * np.arange(1, n + 1, dtype=np.int64)
    energy = np.full(n, kwh)
    return {
        "ts": ts,
        "kwh": energy,
        "supply_on": np.ones(n, dtype=bool),
        "flags": np.zeros(n, dtype=np.uint16),
        "register_kwh": 1000.0 + np.cumsum(energy),
    }


def feats(m: dict[str, np.ndarray], interval_s: int = 1800) -> np.ndarray:
    return compute_features(
        m["ts"], m["kwh"], m["supply_on"], m["flags"], m["register_kwh"], interval_s, BITS
    )


def take(m: dict[str, np.ndarray], sel: np.ndarray | slice) -> dict[str, np.ndarray]:
    return {k: v[sel] for k, v in m.items()}


def test_shape_dtype_and_finite() -> None:
    r = make_readings(3, 10, seed=4, attack_fraction=1.0, min_attack_day=2)
    x = compute_features_grouped(
        r.meter_index, r.ts, r.kwh, r.supply_on, r.flags, r.register_kwh, r.interval_s, BITS
    )
    assert x.shape == (len(r), len(FEATURE_NAMES))
    assert x.dtype == np.float32
    assert np.isfinite(x).all()
    empty = compute_features(
        np.zeros(0, np.int64),
        np.zeros(0),
        np.zeros(0, bool),
        np.zeros(0, np.uint16),
        np.zeros(0),
        1800,
        BITS,
    )
    assert empty.shape == (0, len(FEATURE_NAMES))


def test_regular_meter_is_neutral_after_warmup() -> None:
    x = feats(meter(10))
    day = slots_per_day(1800)
    settled = x[8 * day :]
    for name in CONSUMPTION + ["register_mismatch", "register_drop", "tamper_24h_log"]:
        assert np.abs(settled[:, COL[name]]).max() < 1e-6, name


def test_hour_of_day_uses_interval_midpoint() -> None:
    x = feats(meter(1))
    # First reading ends 00:30 UTC: its midpoint is 00:15.
    angle = 2 * math.pi * (15 * 60) / 86400
    assert x[0, COL["hour_sin"]] == pytest.approx(math.sin(angle), abs=1e-6)
    assert x[0, COL["hour_cos"]] == pytest.approx(math.cos(angle), abs=1e-6)
    shifted = compute_features(
        *(meter(1)[k] for k in ("ts", "kwh", "supply_on", "flags", "register_kwh")),
        1800,
        BITS,
        utc_offset_s=3600,
    )
    angle = 2 * math.pi * (75 * 60) / 86400
    assert shifted[0, COL["hour_sin"]] == pytest.approx(math.sin(angle), abs=1e-6)


@pytest.mark.parametrize("flagged", ["outage", "no_credit"])
def test_outage_and_no_credit_are_neutral_and_excluded(flagged: str) -> None:
    m = meter(12)
    day = slots_per_day(1800)
    off = slice(9 * day, 9 * day + 12)  # six hours without supply / credit
    m["kwh"][off] = 0.0
    if flagged == "outage":
        m["supply_on"][off] = False
    else:
        m["flags"][off] = BITS["no_credit"]
    m["register_kwh"] = 1000.0 + np.cumsum(m["kwh"])
    x = feats(m)
    for name in CONSUMPTION:
        assert np.all(x[off, COL[name]] == 0.0), name
    # Rows after it compare with means that left the zeros out: still perfectly neutral.
    after = x[9 * day + 12 :]
    for name in CONSUMPTION + ["register_mismatch"]:
        assert np.abs(after[:, COL[name]]).max() < 1e-6, name


def test_the_same_zeros_with_supply_on_look_like_theft() -> None:
    m = meter(12)
    day = slots_per_day(1800)
    zeros = slice(9 * day, 9 * day + 12)
    m["kwh"][zeros] = 0.0
    m["register_kwh"] = 1000.0 + np.cumsum(m["kwh"])
    x = feats(m)
    assert np.all(x[zeros, COL["kwh_vs_same_hour_7d"]] < -2.0)
    assert np.all(x[zeros, COL["kwh_vs_24h"]] < -2.0)
    run_hours = np.arange(1, 13) * 0.5
    np.testing.assert_allclose(x[zeros, COL["zero_run_log_h"]], np.log1p(run_hours), rtol=1e-6)


def test_zero_run_skips_outages_and_resets_on_use() -> None:
    m = meter(3)
    start = 60
    m["kwh"][start : start + 10] = 0.0
    m["supply_on"][start + 3 : start + 5] = False  # outage inside the run: transparent
    x = feats(m)
    run = x[start : start + 10, COL["zero_run_log_h"]]
    expected_counts = [1, 2, 3, 0, 0, 4, 5, 6, 7, 8]  # outage rows neutral, run continues
    expected = [math.log1p(c * 0.5) if c else 0.0 for c in expected_counts]
    np.testing.assert_allclose(run, expected, rtol=1e-6)
    assert x[start + 10, COL["zero_run_log_h"]] == 0.0  # use again: run over
    m["kwh"][start + 11] = 0.0
    assert feats(m)[start + 11, COL["zero_run_log_h"]] == pytest.approx(math.log1p(0.5))


def test_zero_run_is_capped_at_the_history_window() -> None:
    m = meter(20)
    m["kwh"][48:] = 0.0
    x = feats(m)
    cap = math.log1p(7 * 24)
    assert x[:, COL["zero_run_log_h"]].max() == pytest.approx(cap, rel=1e-6)


def test_gaps_do_not_look_anomalous() -> None:
    m = meter(12)
    rng = np.random.default_rng(0)
    keep = rng.random(len(m["ts"])) > 0.1
    keep[300:320] = False  # a ten-hour hole
    x = feats(take(m, keep))
    day = slots_per_day(1800)
    settled = x[x.shape[0] - 3 * day :]
    for name in CONSUMPTION + ["register_mismatch", "register_drop"]:
        assert np.abs(settled[:, COL[name]]).max() < 1e-6, name


def test_register_consistency_and_rollback() -> None:
    m = meter(10)
    i, j = 200, 300
    m["register_kwh"][i:] += 5.0  # register jumps 5 kWh more than the interval energy
    m["register_kwh"][j:] -= 50.0  # rolled back
    m["register_kwh"][100:110] = np.nan  # not reported for a while
    x = feats(m)
    assert x[i, COL["register_mismatch"]] > 1.0
    assert x[j, COL["register_mismatch"]] < -1.0
    assert x[j, COL["register_drop"]] > 1.0
    others = np.ones(len(m["ts"]), bool)
    others[[i, j]] = False
    assert np.abs(x[others, COL["register_mismatch"]]).max() < 1e-6
    assert np.abs(x[others, COL["register_drop"]]).max() < 1e-6


def test_register_gap_gives_no_mismatch_but_catches_drop() -> None:
    m = meter(5)
    keep = np.ones(len(m["ts"]), bool)
    keep[100:104] = False  # the readings of four intervals are lost
    m["register_kwh"][104] -= 10.0
    x = feats(take(m, keep))
    row = 100  # first row after the hole
    assert x[row, COL["register_mismatch"]] == 0.0
    assert x[row, COL["register_drop"]] > 0.0


def test_tamper_flags() -> None:
    m = meter(3)
    m["flags"][50] = BITS["cover_open"]
    m["flags"][60] = BITS["magnetic"] | BITS["no_credit"]
    m["flags"][70] = BITS["no_credit"]
    x = feats(m)
    assert x[49, COL["tamper_24h_log"]] == 0.0
    assert x[50, COL["tamper_24h_log"]] == pytest.approx(math.log1p(1))  # this reading counts
    assert x[60, COL["tamper_24h_log"]] == pytest.approx(math.log1p(2))
    assert x[70, COL["tamper_24h_log"]] == pytest.approx(math.log1p(2))  # no_credit: no tamper
    assert x[55, COL["tamper_24h_log"]] == pytest.approx(math.log1p(1))
    assert x[65, COL["tamper_24h_log"]] == pytest.approx(math.log1p(2))
    assert x[50 + 48, COL["tamper_24h_log"]] == pytest.approx(math.log1p(1))  # 50 left the day


def test_unknown_flags_are_ignored_and_bad_masks_refused() -> None:
    m = meter(2)
    x = compute_features(
        m["ts"], m["kwh"], m["supply_on"], m["flags"], m["register_kwh"], 1800, {"other": 1}
    )
    assert np.isfinite(x).all()
    with pytest.raises(ValueError, match="single-bit"):
        compute_features(
            m["ts"],
            m["kwh"],
            m["supply_on"],
            m["flags"],
            m["register_kwh"],
            1800,
            {"cover_open": 3},
        )


def test_input_validation() -> None:
    m = meter(1)
    with pytest.raises(ValueError, match="increasing"):
        compute_features(
            m["ts"][::-1], m["kwh"], m["supply_on"], m["flags"], m["register_kwh"], 1800, BITS
        )
    with pytest.raises(ValueError, match="shape"):
        compute_features(
            m["ts"], m["kwh"][:-1], m["supply_on"], m["flags"], m["register_kwh"], 1800, BITS
        )
    with pytest.raises(ValueError, match="interval_s"):
        compute_features(m["ts"], m["kwh"], m["supply_on"], m["flags"], m["register_kwh"], 60, BITS)
    n = len(m["ts"])
    # a meter's rows split in two runs; NaN meter indices (no meter: each NaN row would start a
    # run of its own)
    for meters in (np.tile([0, 1], n // 2), np.where(np.arange(n) < 4, np.nan, 0.0)):
        with pytest.raises(ValueError, match="contiguous"):
            compute_features_grouped(
                meters,
                np.arange(n),
                m["kwh"],
                m["supply_on"],
                m["flags"],
                m["register_kwh"],
                1800,
                BITS,
            )


def _random_meter(rng: np.random.Generator, days: int, interval_s: int) -> dict[str, np.ndarray]:
    r = make_readings(
        1,
        days,
        interval_s=interval_s,
        seed=int(rng.integers(1 << 30)),
        attack_fraction=1.0,
        min_attack_day=1,
    )
    return {
        "ts": r.ts,
        "kwh": r.kwh,
        "supply_on": r.supply_on,
        "flags": r.flags,
        "register_kwh": r.register_kwh,
    }


@pytest.mark.parametrize("interval_s", [900, 1800, 3600])
def test_causal_and_history_window_is_enough(interval_s: int) -> None:
    rng = np.random.default_rng(interval_s)
    m = _random_meter(rng, 12, interval_s)
    full = feats(m, interval_s)
    n = len(m["ts"])
    for cut in rng.integers(n // 2, n - 1, size=4):
        cut = int(cut)
        # Causal: what comes after a row never changes it.
        changed = {k: v.copy() for k, v in m.items()}
        changed["kwh"][cut + 1 :] *= 7.0
        changed["supply_on"][cut + 1 :] = False
        np.testing.assert_array_equal(feats(changed, interval_s)[: cut + 1], full[: cut + 1])
        prefix = feats(take(m, slice(0, cut + 1)), interval_s)
        np.testing.assert_array_equal(prefix, full[: cut + 1])
        # History: the rows within history_window_s before the first scored row are enough,
        # with the long-memory profile of the days before them (what the gateway keeps).
        first_ts = int(m["ts"][cut])
        np.testing.assert_array_equal(window_features(m, first_ts, interval_s), full[cut:])
        # Without the profile the long memory starts inside the window: only it differs.
        short = take(m, m["ts"] >= first_ts - history_window_s(interval_s))
        alone = feats(short, interval_s)[short["ts"] >= first_ts]
        if short["ts"][0] - m["ts"][0] > 86400:  # a whole day before the window
            assert np.any(alone[:, LONG_MEMORY] != full[cut:, LONG_MEMORY])
        np.testing.assert_array_equal(
            np.delete(alone, LONG_MEMORY, axis=1), np.delete(full[cut:], LONG_MEMORY, axis=1)
        )


def window_features(m: dict[str, np.ndarray], first_ts: int, interval_s: int) -> np.ndarray:
    """Features of the rows from ``first_ts`` on as the gateway computes them: from the rows
    within history_window_s before ``first_ts`` and the meter's long-memory profile as it
    stood before them."""
    short = take(m, m["ts"] >= first_ts - history_window_s(interval_s))
    zeros = np.zeros(len(short["ts"]), np.int64)
    usual = fold(
        zeros,
        short["ts"],
        short["kwh"],
        short["supply_on"] & ((short["flags"] & BITS["no_credit"]) == 0),
        0,
        interval_s,
        _profile_through(m, int(short["ts"][0]), interval_s),
    )
    got = compute_features_grouped(
        zeros,
        *(short[k] for k in ("ts", "kwh", "supply_on", "flags", "register_kwh")),
        interval_s,
        BITS,
        usual=usual,
    )
    return got[short["ts"] >= first_ts]


def _profile_through(m: dict[str, np.ndarray], ts: int, interval_s: int) -> dict[int, object]:
    """The long-memory profile of meter ``m`` after folding the local (UTC) days up to the one
    holding ``ts``: fold every row up to the first one of the next day."""
    day, _ = local_day_and_hour(m["ts"], interval_s, 0)
    stop = int(np.searchsorted(day, day[np.searchsorted(m["ts"], ts)] + 1)) + 1
    valid = m["supply_on"] & ((m["flags"] & BITS["no_credit"]) == 0)
    part = fold(
        np.zeros(stop, np.int64), m["ts"][:stop], m["kwh"][:stop], valid[:stop], 0, interval_s
    )
    return dict(part.profiles)


def test_grouped_equals_per_meter_even_in_small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    r = make_readings(6, 15, seed=11, attack_fraction=0.5)
    args = (r.ts, r.kwh, r.supply_on, r.flags, r.register_kwh)
    grouped = compute_features_grouped(r.meter_index, *args, r.interval_s, BITS)
    per_meter = np.concatenate(
        [
            compute_features(*(a[r.meter_index == i] for a in args), r.interval_s, BITS)
            for i in range(6)
        ]
    )
    np.testing.assert_array_equal(grouped, per_meter)
    monkeypatch.setattr(features_mod, "_CHUNK_SLOTS", 500)
    chunked = compute_features_grouped(r.meter_index, *args, r.interval_s, BITS)
    np.testing.assert_array_equal(grouped, chunked)


def test_only_returns_the_asked_rows_features(monkeypatch: pytest.MonkeyPatch) -> None:
    r = make_readings(6, 10, seed=12, attack_fraction=0.5)
    args = (r.meter_index, r.ts, r.kwh, r.supply_on, r.flags, r.register_kwh, r.interval_s, BITS)
    every = compute_features_grouped(*args)
    monkeypatch.setattr(features_mod, "_CHUNK_SLOTS", 300)  # chunks with no row asked for
    n = every.shape[0]
    for only in (np.arange(n), np.array([0, 5, n - 1]), np.arange(n - 40, n), np.array([], int)):
        got = compute_features_grouped(*args, only=only)
        assert got.shape == (len(only), len(FEATURE_NAMES))
        np.testing.assert_array_equal(got, every[only])
    for bad in (np.array([3, 2]), np.array([1, 1]), np.array([-1]), np.array([n]), [0.5, 1.7]):
        with pytest.raises(ValueError, match="only"):
            compute_features_grouped(*args, only=bad)
    unsorted = (args[0], args[1][::-1], *args[2:])  # checked even when no row is asked for
    with pytest.raises(ValueError, match="increasing"):
        compute_features_grouped(*unsorted, only=np.array([], int))


def test_misaligned_timestamps_and_long_gaps() -> None:
    m = meter(10)
    m["ts"] = m["ts"] + np.random.default_rng(1).integers(-300, 300, len(m["ts"]))
    keep = np.ones(len(m["ts"]), bool)
    keep[20:400] = False  # eight days without data
    x = feats(take(m, keep))
    assert np.isfinite(x).all()
    assert np.all(x[20:40, COL["kwh_vs_7d"]] == 0.0)  # no history after the hole: neutral


def test_theft_separates_from_normal_rows() -> None:
    r = make_readings(40, 20, seed=5, attack_fraction=1.0)
    x = compute_features_grouped(
        r.meter_index, r.ts, r.kwh, r.supply_on, r.flags, r.register_kwh, r.interval_s, BITS
    )
    normal = x[r.label == ""]
    bypass = x[r.label == "bypass"]
    assert bypass.shape[0] > 50
    c = COL["kwh_vs_same_hour_7d"]
    assert np.median(bypass[:, c]) < np.quantile(normal[:, c], 0.01)


def test_speed_one_meter_two_weeks_and_grouped() -> None:
    m = meter(14)
    feats(m)
    start = time.perf_counter()
    for _ in range(20):
        feats(m)
    per_call = (time.perf_counter() - start) / 20
    assert per_call < 0.02, f"{per_call * 1e3:.1f} ms per meter-fortnight"
    r = make_readings(100, 30, seed=2)
    start = time.perf_counter()
    compute_features_grouped(
        r.meter_index, r.ts, r.kwh, r.supply_on, r.flags, r.register_kwh, r.interval_s, BITS
    )
    rate = len(r) / (time.perf_counter() - start)
    assert rate > 100_000, f"{rate:.0f} rows/s"


def test_flags_mask_from_names() -> None:
    from edge_agent.features import DEFAULT_FLAG_BITS, flags_mask

    mask = flags_mask([(), ("cover_open",), ("no_credit", "magnetic", "unknown")])
    assert mask.dtype == np.uint16
    assert mask[0] == 0
    assert mask[1] == DEFAULT_FLAG_BITS["cover_open"]
    assert mask[2] == DEFAULT_FLAG_BITS["no_credit"] | DEFAULT_FLAG_BITS["magnetic"]
    x = compute_features(
        T0 + 1800 * np.arange(1, 4),
        np.ones(3),
        np.ones(3, bool),
        mask,
        np.full(3, np.nan),
        1800,
        DEFAULT_FLAG_BITS,
    )
    assert x[:, COL["tamper_24h_log"]].tolist() == pytest.approx([0.0, LN2, math.log(3.0)])


# --- volatility features (rough_24h, flatness_24h, day_spread_6d) ---------------------------

LN2 = math.log(2.0)


def hourly(kwh: list[float] | np.ndarray) -> dict[str, np.ndarray]:
    """A meter with one reading per hour (24 slots a day: 6 = a quarter day)."""
    energy = np.asarray(kwh, dtype=np.float64)
    n = energy.shape[0]
    return {
        "ts": T0 + 3600 * np.arange(1, n + 1, dtype=np.int64),
        "kwh": energy,
        "supply_on": np.ones(n, dtype=bool),
        "flags": np.zeros(n, dtype=np.uint16),
        "register_kwh": np.full(n, np.nan),
    }


def test_rough_24h_is_the_median_of_adjacent_log_ratios() -> None:
    m = hourly([1, 2, 1, 4, 1, 8, 1] + [1] * 41)
    x = feats(m, 3600)[:, COL["rough_24h"]]
    # pairs (ln 2 units): 1, 1, 2, 2, 3, 3, then 0 for every pair of ones
    assert np.all(x[:6] == 0.0)  # fewer than 6 pairs (a quarter day): neutral
    # row 8: 0 0 1 1 2 2 3 3 -> (1 + 2) / 2; row 12: six 0s and 1 1 2 2 3 3 -> (0 + 1) / 2
    expected = [2, 2, 1.5, 1, 1, 1, 0.5, 0]
    for row, value in enumerate(expected, start=6):
        assert x[row] == pytest.approx(value * LN2, abs=1e-6), row
    assert np.all(x[13:] == 0.0)
    # Only the pairs of the last 24 h count: 1, 8, 1, 8, ... up to row 13, then 8 kWh flat, so
    # slots 1..13 hold a pair of 3 ln 2, later slots 0. Row 25 sees slots 2..25: 12 and 12.
    m = hourly([1.0, 8.0] * 7 + [8.0] * 20)
    x = feats(m, 3600)[:, COL["rough_24h"]]
    assert x[24] == pytest.approx(3 * LN2, abs=1e-6)  # 13 threes, 11 zeros
    assert x[25] == pytest.approx(1.5 * LN2, abs=1e-6)  # 12 threes, 12 zeros
    assert x[26] == 0.0  # 11 threes, 13 zeros


def test_rough_24h_pairs_need_two_adjacent_valid_nonzero_readings() -> None:
    base = [1, 2, 1, 4, 1, 8, 1, 1, 1, 1]
    for how in ("outage", "no_credit", "zero", "missing"):
        m = hourly(base)
        if how == "outage":
            m["supply_on"][3] = False
        elif how == "no_credit":
            m["flags"][3] = BITS["no_credit"]
        elif how == "zero":
            m["kwh"][3] = 0.0
        if how == "missing":
            m = take(m, np.arange(10) != 3)
            x = feats(m, 3600)[:, COL["rough_24h"]]
            x = np.insert(x, 3, 0.0)
        else:
            x = feats(m, 3600)[:, COL["rough_24h"]]
        # Pairs at slots 3 and 4 are gone: 1, 1, 3, 3, 0 by row 7: still < 6 pairs.
        assert np.all(x[:8] == 0.0), how
        # Row 8: 1, 1, 3, 3, 0, 0 -> median (1 + 1) / 2; row 9: 1, 1, 3, 3, 0, 0, 0 -> 1.
        assert x[8] == pytest.approx(LN2, abs=1e-6), how
        assert x[9] == pytest.approx(LN2, abs=1e-6), how


def test_flatness_24h_is_std_over_mean() -> None:
    m = hourly([1.0, 3.0] * 24)
    x = feats(m, 3600)[:, COL["flatness_24h"]]
    assert np.all(x[:5] == 0.0)  # fewer than 6 readings: neutral
    assert x[5] == pytest.approx(0.5, abs=1e-6)  # 1,3,1,3,1,3: mean 2, std 1
    assert x[6] == pytest.approx(math.sqrt(48) / 13, abs=1e-6)  # 1,3,1,3,1,3,1
    np.testing.assert_allclose(x[23::2], 0.5, atol=1e-6)  # every full even window
    m["supply_on"][2] = False  # invalid: neutral and left out of the window
    x = feats(m, 3600)[:, COL["flatness_24h"]]
    assert x[2] == 0.0
    assert x[6] == pytest.approx(0.5, abs=1e-6)  # 1,3,3,1,3,1
    zeros = feats(hourly([0.0] * 30), 3600)[:, COL["flatness_24h"]]
    assert np.all(zeros == 0.0)


def test_today_vs_best_6d_compares_today_so_far_with_the_best_earlier_day() -> None:
    f = features_mod.ENERGY_FLOOR_KW * 1.0
    rising = hourly([1.0] * 24 + [2.0] * 24 + [4.0] * 24)
    x = feats(rising, 3600)[:, COL["today_vs_best_6d"]]
    assert np.all(x[:24] == 0.0)  # no earlier day yet
    assert x[71] == pytest.approx(math.log((4 + f) / (2 + f)), abs=1e-6)  # today is the best
    falling = feats(hourly([4.0] * 24 + [2.0] * 24 + [1.0] * 24), 3600)[:, COL["today_vs_best_6d"]]
    assert falling[48] == pytest.approx(math.log((1 + f) / (4 + f)), abs=1e-6)  # 1st hour
    assert falling[71] == pytest.approx(math.log((1 + f) / (4 + f)), abs=1e-6)
    # Same hours only: at 06:00 today's six hours are compared with 00:00-06:00 of each day.
    m = hourly([4.0] * 6 + [1.0] * 18 + [2.0] * 24)
    x = feats(m, 3600)[:, COL["today_vs_best_6d"]]
    assert x[29] == pytest.approx(math.log((2 + f) / (4 + f)), abs=1e-6)
    assert x[47] == pytest.approx(math.log((2 + f) / (1.75 + f)), abs=1e-6)


def test_today_vs_best_6d_follows_the_local_day() -> None:
    # With utc_offset_s = 2 h the local day starts at 22:00 UTC: a reading at 23:00 UTC (local
    # 01:00) is the second of its local day.
    m = hourly([4.0] * 24 + [1.0] * 24)
    x = compute_features(
        m["ts"],
        m["kwh"],
        m["supply_on"],
        m["flags"],
        m["register_kwh"],
        3600,
        BITS,
        utc_offset_s=7200,
    )[:, COL["today_vs_best_6d"]]
    f = features_mod.ENERGY_FLOOR_KW * 1.0
    # Row 47 (UTC 23:00-24:00, local 01:00-02:00): today = rows 46..47 (1 kWh each), the same
    # local hours a day earlier = rows 22..23 (4 kWh).
    assert x[47] == pytest.approx(math.log((1 + f) / (4 + f)), abs=1e-6)
    # Row 45 (local 23:00): its local day holds rows 22..45, today's mean (2 x 4 + 22 x 1) / 24.
    assert x[45] == pytest.approx(math.log((30 / 24 + f) / (4 + f)), abs=1e-6)


def _reference_volatility(
    ts: np.ndarray, kwh: np.ndarray, valid: np.ndarray, interval_s: int, utc_offset_s: int = 0
) -> np.ndarray:
    """rough_24h, flatness_24h, day_spread_6d, today_vs_best_6d of one meter, straight from
    their definitions (local days with ``utc_offset_s``), one row at a time."""
    day = slots_per_day(interval_s)
    floor = features_mod.ENERGY_FLOOR_KW * interval_s / 3600
    q = np.rint(kwh * 1e6)
    slot = (ts + interval_s // 2) // interval_s
    energy = {int(s): q[i] for i, s in enumerate(slot) if valid[i]}
    out = np.zeros((len(ts), 4))
    enough = [False] * len(ts)
    for i, g in enumerate(slot):
        if not valid[i]:
            continue
        pairs = [
            abs(math.log(energy[s] / energy[s - 1]))
            for s in range(g - day + 1, g + 1)
            if energy.get(s, 0) > 0 and energy.get(s - 1, 0) > 0
        ]
        if len(pairs) >= day // 4:
            out[i, 0] = float(np.median(pairs))
        last = [energy[s] for s in range(g - day + 1, g + 1) if s in energy]
        if len(last) >= day // 4:
            out[i, 1] = np.std(last) / max(np.mean(last), floor * 1e6)
        # Local day of a slot: that of its midpoint; `start` = today's first slot.
        since = int((g * interval_s - interval_s / 2 + utc_offset_s) % 86400 // interval_s)
        start = g - since
        logs = []
        for k in range(1, 7):
            block = [
                energy[s] for s in range(start - k * day, start - (k - 1) * day) if s in energy
            ]
            if len(block) >= day // 4:
                logs.append(math.log(np.mean(block) / 1e6 + floor))
        if len(logs) >= 3:
            out[i, 2] = np.std(logs)
        today = [energy[s] for s in range(start, g + 1) if s in energy]
        earlier = []
        for k in range(1, 7):
            same = [energy[s] for s in range(start - k * day, g - k * day + 1) if s in energy]
            if same:
                earlier.append(math.log(np.mean(same) / 1e6 + floor))
        if today and earlier:
            out[i, 3] = math.log(np.mean(today) / 1e6 + floor) - max(earlier)
        enough[i] = len(last) >= day // 4
    # Not valid, or too few valid readings in the last 24 h: rough_24h and flatness_24h of the
    # latest valid row that had enough, if it is at most 6 days back.
    for i in range(len(ts)):
        if not (valid[i] and enough[i]):
            for j in range(i - 1, -1, -1):
                if slot[i] - slot[j] > 6 * day:
                    break
                if valid[j] and enough[j]:
                    out[i, :2] = out[j, :2]
                    break
    return out


@pytest.mark.parametrize(
    ("interval_s", "utc_offset_s"), [(900, 0), (1800, 0), (3600, 0), (1800, 5400)]
)
def test_volatility_features_match_their_definition(interval_s: int, utc_offset_s: int) -> None:
    rng = np.random.default_rng(100 + interval_s)
    r = make_readings(3, 10, interval_s=interval_s, seed=interval_s, attack_fraction=0.7)
    kwh = r.kwh.copy()
    kwh[rng.random(len(r)) < 0.05] = 0.0
    on = r.supply_on & (rng.random(len(r)) > 0.05)
    flags = r.flags.copy()
    flags[rng.random(len(r)) < 0.03] |= BITS["no_credit"]
    keep = rng.random(len(r)) > 0.08
    sel = {k: v[keep] for k, v in (("m", r.meter_index), ("ts", r.ts), ("kwh", kwh), ("on", on))}
    flags, register = flags[keep], r.register_kwh[keep]
    x = compute_features_grouped(
        sel["m"],
        sel["ts"],
        sel["kwh"],
        sel["on"],
        flags,
        register,
        interval_s,
        BITS,
        utc_offset_s=utc_offset_s,
    )
    cols = [COL["rough_24h"], COL["flatness_24h"], COL["day_spread_6d"], COL["today_vs_best_6d"]]
    for i in np.unique(sel["m"]):
        rows = sel["m"] == i
        valid = sel["on"][rows] & ((flags[rows] & BITS["no_credit"]) == 0)
        expected = _reference_volatility(
            sel["ts"][rows], sel["kwh"][rows], valid, interval_s, utc_offset_s
        )
        np.testing.assert_allclose(x[rows][:, cols], expected, rtol=2e-6, atol=2e-6)
        assert np.count_nonzero(expected[:, 0]) > 0 and np.count_nonzero(expected[:, 2]) > 0
        assert np.count_nonzero(expected[:, 3]) > 0


def test_history_window_covers_the_volatility_windows() -> None:
    # day_spread_6d and today_vs_best_6d reach back at most 7 days - 1 slot (today's first
    # slot - 6 days), rough_24h's oldest pair starts 24 h back.
    for interval_s in (900, 1800, 3600):
        assert history_window_s(interval_s) >= 7 * 86400 - interval_s


def test_lifeline_loads_are_above_the_energy_floor() -> None:
    # 10 W (5 Wh per 30 min) then a zero: eps = max(0.1 x 5 Wh, 1 W x 0.5 h) = 0.5 Wh, so the
    # ratio is log(0.5 / 5.5) and not squashed by the floor.
    m = meter(9, kwh=0.005)
    m["kwh"][-1] = 0.0
    x = feats(m)
    for name in ("kwh_vs_24h", "kwh_vs_7d", "kwh_vs_same_hour_7d"):
        assert x[-1, COL[name]] == pytest.approx(-math.log(11.0), abs=1e-6), name


def _reference_level_and_evening(
    ts: np.ndarray, kwh: np.ndarray, valid: np.ndarray, interval_s: int, utc_offset_s: int
) -> np.ndarray:
    """log_level_7d, evening_share_7d and night_level_7d straight from their definitions, one
    row at a time."""
    day = 86400 // interval_s
    week = 7 * day
    slot = (ts + interval_s // 2) // interval_s
    q = np.rint(kwh * 1e6)
    hour = ((ts - interval_s / 2 + utc_offset_s) % 86400) / 3600.0
    evening = (hour >= 17) & (hour < 23)
    night = (hour >= 23) | (hour < 5)
    floor = features_mod.ENERGY_FLOOR_KW * interval_s / 3600.0
    out = np.zeros((len(ts), 3))
    for i in range(len(ts)):
        before = valid & (slot >= slot[i] - week) & (slot < slot[i])  # the previous 7 days
        if before.sum() >= day:
            mean = q[before].sum() / before.sum() / 1e6
            out[i, 0] = math.log(max(mean, floor) / (interval_s / 3600.0))
        upto = valid & (slot > slot[i] - week) & (slot <= slot[i])  # 7 days up to this one
        if upto.sum() >= day and q[upto].sum() > 0:
            out[i, 1] = q[upto & evening].sum() / q[upto].sum()
        if upto.sum() >= day and (upto & night).any():
            night_mean = q[upto & night].sum() / (upto & night).sum() / 1e6
            out[i, 2] = math.log(max(night_mean, floor) / (interval_s / 3600.0))
    return out


@pytest.mark.parametrize(("interval_s", "utc_offset_s"), [(900, 0), (1800, 3600), (3600, -7200)])
def test_level_and_evening_share_match_their_definition(interval_s: int, utc_offset_s: int) -> None:
    rng = np.random.default_rng(7 + interval_s)
    r = make_readings(3, 10, interval_s=interval_s, seed=interval_s + 1, attack_fraction=0.7)
    on = r.supply_on & (rng.random(len(r)) > 0.05)
    flags = r.flags.copy()
    flags[rng.random(len(r)) < 0.03] |= BITS["no_credit"]
    keep = rng.random(len(r)) > 0.08
    m, ts, kwh, on, flags = r.meter_index[keep], r.ts[keep], r.kwh[keep], on[keep], flags[keep]
    x = compute_features_grouped(
        m, ts, kwh, on, flags, r.register_kwh[keep], interval_s, BITS, utc_offset_s=utc_offset_s
    )
    cols = [COL["log_level_7d"], COL["evening_share_7d"], COL["night_level_7d"]]
    for i in np.unique(m):
        rows = m == i
        valid = on[rows] & ((flags[rows] & BITS["no_credit"]) == 0)
        expected = _reference_level_and_evening(
            ts[rows], kwh[rows], valid, interval_s, utc_offset_s
        )
        np.testing.assert_allclose(x[rows][:, cols], expected, rtol=2e-6, atol=2e-6)
        assert all(np.count_nonzero(expected[:, k]) > 0 for k in range(3))


def test_an_outage_keeps_the_meters_level_and_evening_share() -> None:
    # Not validity-masked on purpose: an outage row then looks like the meter's normal rows
    # (ratios neutral, level and share as usual), not like a meter with no level at all.
    m = meter(9)
    m["supply_on"][-3:] = False
    m["kwh"][-3:] = 0.0
    x = feats(m)
    for name in ("log_level_7d", "evening_share_7d", "night_level_7d"):  # outage slots: not counted
        assert x[-1, COL[name]] == pytest.approx(x[-4, COL[name]], abs=0.01), name
    assert x[-4, COL["evening_share_7d"]] == pytest.approx(6 / 24, abs=1e-6)  # flat load
    assert x[-1, COL["log_level_7d"]] == pytest.approx(math.log(2.0), abs=1e-6)  # 1 kWh / 30 min
    assert x[-1, COL["night_level_7d"]] == pytest.approx(math.log(2.0), abs=1e-6)


def test_volatility_after_a_credit_gap_keeps_the_meters_own_value() -> None:
    # 8 days of a varying load, then 4 days without credit, then use again: the first valid
    # readings lack a quarter day of samples in their last 24 h, so rough_24h and flatness_24h
    # keep their values from before the gap instead of 0 ("perfectly steady", which the model
    # isolates).
    m = meter(13)
    day = 48
    m["kwh"] = 0.5 + 0.4 * np.sin(np.arange(len(m["kwh"])) * 0.7) ** 2
    m["kwh"][4 * day : 5 * day] *= 1.8  # one heavier day, so day_spread_6d is not tiny
    gap = slice(8 * day, 12 * day)
    m["flags"][gap] |= BITS["no_credit"]
    m["kwh"][gap] = 0.0
    x = feats(m)
    cols = [COL["rough_24h"], COL["flatness_24h"]]
    before, after = x[8 * day - 1, cols], x[12 * day, cols]
    assert (before > 0.05).all()
    np.testing.assert_array_equal(after, before)
    # The gap's own rows keep them too (as they keep the meter's level): a 0 there would make
    # every outage and empty meter stand out to the model.
    np.testing.assert_array_equal(x[gap][:, cols], np.broadcast_to(before, (4 * day, 2)))
    # day_spread_6d is not carried: what it had before the gap depends on days outside the
    # history window of the rows after it.
    assert x[8 * day - 1, COL["day_spread_6d"]] > 0.05 and x[12 * day, COL["day_spread_6d"]] == 0
    # Four days of valid zeros (a bypass) are evidence, not a lack of it: no carrying.
    z = meter(13)
    z["kwh"] = m["kwh"].copy()
    xz = feats(z)
    assert xz[12 * day - 1, COL["rough_24h"]] == 0.0
    assert xz[12 * day - 1, COL["flatness_24h"]] == 0.0
    # After a gap of a week, the last value is too old: 0 again.
    w = meter(17)
    w["kwh"] = 0.5 + 0.4 * np.sin(np.arange(len(w["kwh"])) * 0.7) ** 2
    w["flags"][8 * day : 15 * day] |= BITS["no_credit"]
    assert (feats(w)[15 * day, cols] == 0).all()


def test_mean_24h_vs_usual_needs_half_a_day_of_valid_readings() -> None:
    # A day without credit, then a heavier day: the level change is measured only once the last
    # 24 h hold half a day of valid readings. Fewer give a mean of some hours of the day only,
    # against the whole day before: the first hours after a top-up looked like a level change.
    m = meter(11)
    day = 48
    m["kwh"][9 * day :] = 2.0
    m["flags"][8 * day : 9 * day] |= BITS["no_credit"]
    m["kwh"][8 * day : 9 * day] = 0.0
    x = feats(m)[:, COL["mean_24h_vs_usual"]]
    assert (x[9 * day : 9 * day + day // 2] == 0.0).all()  # up to 23 valid readings before
    assert (x[9 * day + day // 2 : 10 * day] > 0.3).all()  # log(2 / 1), smoothed


@pytest.mark.parametrize("interval_s", [900, 1800, 3600])
def test_history_window_is_enough_with_a_gap_at_the_carry_limit(interval_s: int) -> None:
    # A regular meter, then no credit for 6 days minus 2, minus 1 and exactly 6 days (in slots):
    # the first rows after the gap have their last valid row 6 days - 1 slot, 6 days and 6 days
    # + 1 slot back, on both sides of the limit of what they may keep (the gap's last rows too).
    day = slots_per_day(interval_s)
    for gap_slots in (6 * day - 2, 6 * day - 1, 6 * day):
        m = meter(16, interval_s)
        m["kwh"] = 0.5 + 0.4 * np.sin(np.arange(len(m["kwh"])) * 0.7) ** 2
        gap = slice(8 * day, 8 * day + gap_slots)
        m["flags"][gap] |= BITS["no_credit"]
        full = feats(m, interval_s)
        kept = full[gap.stop, COL["rough_24h"]] != 0
        assert kept == (gap_slots < 6 * day), gap_slots
        for cut in range(gap.stop - 2, gap.stop + 3):
            got = window_features(m, int(m["ts"][cut]), interval_s)
            np.testing.assert_array_equal(got, full[cut:], err_msg=f"{gap_slots}, {cut}")


@pytest.mark.parametrize("gap_days", [0.5, 1.5, 4, 6.5])
def test_history_window_is_enough_after_a_credit_gap(gap_days: float) -> None:
    # What a row keeps from before a gap must come from inside its own history window: the agent
    # reads only history_window_s before its new readings.
    interval_s = 1800
    rng = np.random.default_rng(int(gap_days * 10))
    m = _random_meter(rng, 20, interval_s)
    day = 48
    gap = slice(10 * day, 10 * day + int(gap_days * day))
    m["flags"][gap] |= BITS["no_credit"]
    full = feats(m, interval_s)
    for cut in range(gap.stop, gap.stop + 2 * day, 5):
        got = window_features(m, int(m["ts"][cut]), interval_s)
        np.testing.assert_array_equal(got, full[cut:], err_msg=f"cut {cut}")


def test_supplied_is_supply_on_and_no_credit_bit_whatever_the_flags_dtype() -> None:
    on = np.array([True, True, False, True])
    flags = np.array([0, 4, 0, 5], dtype=np.uint8)
    assert supplied(on, flags, 4).tolist() == [True, False, False, False]
    assert supplied(on, flags, 0).tolist() == on.tolist()  # no credit bit in the layout
    wide = 1 << 12  # a bit the narrow dtype cannot hold: no reading carries it
    assert supplied(on, flags.astype(np.int8), wide).tolist() == on.tolist()
    signed = np.array([-128, 0, 0, -128], dtype=np.int8)  # bit 7 set, as a signed byte
    assert supplied(on, signed, wide).tolist() == on.tolist()
    assert supplied(on, signed, 1 << 7).tolist() == [False, True, False, False]


def test_the_gateways_features_and_clocks_do_not_import_numpy_ma() -> None:
    """numpy.ma costs a gateway about 2 MB of memory, and np.unique (without indices) imports
    it: the features (with their grouping check), the local clocks (both paths) and the long
    memory get by without it. In a fresh interpreter: this one has it. (The demo's simulator
    source runs the simulator, which needs numpy.ma.)"""
    code = """
import sys
import numpy as np
from edge_agent.features import DEFAULT_FLAG_BITS, compute_features_grouped
from edge_agent.localtime import utc_offsets
from edge_agent.long_memory import fold

t = np.tile(np.arange(10 * 48) * 1800 + 1_700_000_000, 2)
m = np.repeat([0, 1], 10 * 48)
off = utc_offsets(t, "Africa/Lagos")
years = utc_offsets(np.array([1_500_000_000, 1_700_000_000, 1_600_000_000]), "Europe/London")
kwh = np.ones(t.size)
on = np.ones(t.size, bool)
usual = fold(m, t, kwh, on, off, 1800)
x = compute_features_grouped(
    m, t, kwh, on, np.zeros(t.size, np.uint16), np.full(t.size, np.nan), 1800,
    DEFAULT_FLAG_BITS, utc_offset_s=off, only=np.arange(t.size - 5, t.size), usual=usual,
)
assert x.shape[0] == 5 and years.tolist() == [3600, 0, 3600]
print("numpy.ma" in sys.modules)
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"
