"""The features' long memory: a step down stays visible for weeks, the gateway's profile folded
call by call (and across a restart) is training's bit for bit, and what must not enter it
(outages, empty prepaid meters, a day still open, a day already closed) does not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_agent.buffer import Buffer, BufferFull
from edge_agent.feature_spec import PROFILE_HOURS, MeterProfile
from edge_agent.features import FEATURE_NAMES, compute_features, compute_features_grouped
from edge_agent.long_memory import DECAY, MAX_GAP_DAYS, fold, local_day_and_hour
from ml.synthetic import FLAG_BITS, make_readings
from tests.support.detection import INTERVAL, T0, gateway, models, reading, row_of

COL = {name: i for i, name in enumerate(FEATURE_NAMES)}
DAY = 86400 // INTERVAL


def household(days: int, step_day: int | None = None, factor: float = 0.5) -> np.ndarray:
    """kWh per 30 min of a noisy household, scaled by ``factor`` from ``step_day`` on."""
    rng = np.random.default_rng(7)
    k = np.arange(days * DAY)
    hour = (k % DAY + 0.5) / 2
    kwh = (0.1 + 0.25 * ((hour >= 17) & (hour < 23))) * rng.lognormal(0.0, 0.2, k.size)
    if step_day is not None:
        kwh[step_day * DAY :] *= factor
    return kwh


def features_of(kwh: np.ndarray, supply_on: np.ndarray | None = None) -> np.ndarray:
    n = kwh.size
    ts = T0 + INTERVAL * np.arange(1, n + 1)
    on = np.ones(n, bool) if supply_on is None else supply_on
    return compute_features(
        ts, kwh, on, np.zeros(n, np.uint16), np.full(n, np.nan), INTERVAL, FLAG_BITS
    )


def day_mean(x: np.ndarray, name: str, d: int) -> float:
    return float(x[d * DAY : (d + 1) * DAY, COL[name]].mean())


def test_a_step_down_stays_visible_when_the_weeks_features_have_forgotten_it() -> None:
    x = features_of(household(45, step_day=20))
    for name in ("mean_24h_vs_usual",):
        assert all(abs(day_mean(x, name, d)) < 0.08 for d in range(4, 20)), name
        # Twenty-four days after the step (longer than the 20 days before it) the profile has
        # moved towards the new level and still shows the drop (log 0.5 = -0.69; a 28-day
        # trailing mean would be at log(0.5 / 0.57) = -0.13).
        assert all(day_mean(x, name, d) < -0.2 for d in range(21, 45)), name
    # The 7-day features see the step for a week, then it is the meter's new normal.
    assert day_mean(x, "kwh_vs_same_hour_7d", 21) < -0.4
    assert abs(day_mean(x, "kwh_vs_same_hour_7d", 35)) < 0.08
    # The profile needs a few days before it speaks: neutral at first.
    assert not x[: 2 * DAY, COL["mean_24h_vs_usual"]].any()


def test_outages_and_empty_prepaid_meters_do_not_teach_the_profile() -> None:
    kwh = household(30)
    on = np.ones(kwh.size, bool)
    off = slice(10 * DAY, 15 * DAY)  # five days of load-shedding, reading zero
    kwh_off = kwh.copy()
    kwh_off[off] = 0.0
    on[off] = False
    x = features_of(kwh_off, on)
    # After the outage the meter is compared with what it used before it, not with zeros.
    assert all(abs(day_mean(x, "mean_24h_vs_usual", d)) < 0.1 for d in range(16, 30))
    assert not x[off, COL["mean_24h_vs_usual"]].any()  # and outage rows are neutral
    # The same zeros with the supply on are what the profile must learn from (and flag).
    y = features_of(kwh_off)
    assert day_mean(y, "mean_24h_vs_usual", 12) < -1.0


def test_the_hours_are_the_meters_local_ones() -> None:
    ts = T0 + INTERVAL * np.arange(1, 6 * DAY + 1)
    day, hour = local_day_and_hour(ts, INTERVAL, 3 * 3600)
    utc_day, utc_hour = local_day_and_hour(ts, INTERVAL, 0)
    assert np.array_equal(hour, (utc_hour + 3) % 24)
    assert day[0] == utc_day[0] and day[-1] == utc_day[-1] + 1  # local midnight is 21:00 UTC
    # Use only at 19 h in Nairobi (16 h UTC): the profile's hour 19 learns it.
    kwh = np.where(hour == 19, 1.0, 0.0)
    usual = fold(np.zeros(ts.size, int), ts, kwh, np.ones(ts.size, bool), 3 * 3600, INTERVAL)
    p = usual.profiles[0]
    sums = np.frombuffer(p.sums, "<f8")
    assert sums.shape == (PROFILE_HOURS,) and np.flatnonzero(sums).tolist() == [19]
    assert p.through_day == day[-1] - 1


def test_folding_call_by_call_is_folding_at_once() -> None:
    r = make_readings(5, 24, seed=3, attack_fraction=0.6)
    valid = r.supply_on & ((r.flags & FLAG_BITS["no_credit"]) == 0)
    whole = fold(r.meter_index, r.ts, r.kwh, valid, 0, r.interval_s)
    rng = np.random.default_rng(5)
    cuts = np.sort(rng.integers(r.ts.min(), r.ts.max(), size=12))
    profiles: dict[int, MeterProfile] = {}
    done = np.zeros(r.ts.size, bool)
    for lo, hi in zip(np.r_[r.ts.min() - 1, cuts], np.r_[cuts, r.ts.max()], strict=True):
        # Like the gateway: new rows (lo, hi], with the eight days of history before them.
        rows = (r.ts > lo - 8 * 86400) & (r.ts <= hi)
        new = (r.ts > lo) & (r.ts <= hi)
        part = fold(
            r.meter_index[rows], r.ts[rows], r.kwh[rows], valid[rows], 0, r.interval_s, profiles
        )
        got = new[rows]
        np.testing.assert_array_equal(part.level_kw[got], whole.level_kw[new])
        profiles.update(part.profiles)
        done |= new
    assert done.all()
    assert profiles == whole.profiles
    assert np.isfinite(whole.level_kw).mean() > 0.8


def test_a_closed_day_is_not_folded_again_and_a_stale_profile_is_dropped() -> None:
    ts = T0 + INTERVAL * np.arange(1, 10 * DAY + 1)
    kwh = np.full(ts.size, 0.5)
    ones = np.ones(ts.size, bool)
    zeros = np.zeros(ts.size, int)
    first = fold(zeros, ts, kwh, ones, 0, INTERVAL)
    p = first.profiles[0]
    # A late reading of a day already folded: not folded again, compared with the stored profile.
    late = fold(zeros[:1], ts[5 * DAY : 5 * DAY + 1], kwh[:1] * 9, ones[:1], 0, INTERVAL, {0: p})
    assert late.profiles == {}
    assert late.level_kw[0] == pytest.approx(1.0)  # 0.5 kWh per 30 min
    # Readings half a year after the profile: it is dropped, the meter starts again.
    far = ts + (MAX_GAP_DAYS + 5) * 86400
    again = fold(zeros, far, kwh * 2, ones, 0, INTERVAL, {0: p})
    fresh = fold(zeros, far, kwh * 2, ones, 0, INTERVAL)
    assert again.profiles == fresh.profiles
    # A gap shorter than that decays the old profile day by day (weights count readings: two
    # an hour each day at 30-min intervals).
    near = ts + 20 * 86400
    kept = fold(zeros, near, kwh * 2, ones, 0, INTERVAL, {0: p}).profiles[0]
    first_day = int(local_day_and_hour(near[:1], INTERVAL, 0)[0][0])
    w_old = np.frombuffer(p.weights, "<f8")
    expected = w_old * DECAY ** (kept.through_day - p.through_day) + sum(
        2 * DECAY**k for k in range(kept.through_day - first_day + 1)
    )
    np.testing.assert_allclose(np.frombuffer(kept.weights, "<f8"), expected, rtol=1e-12)


def test_the_gateway_folds_across_calls_and_restarts_as_training_does(tmp_path: Path) -> None:
    """Readings come a few hours at a time, the agent restarts twice; every stored score is
    the score of training's features (folded over everything at once), bit for bit."""
    path = tmp_path / "b.db"
    meters = {"steady": 1.0, "step": 0.4}
    days = 26
    base = household(days)
    obj = [
        reading(m, k, kwh=round(float(base[k]) * (f if k >= 15 * DAY else 1.0), 3))
        for k in range(days * DAY)
        for m, f in meters.items()
    ]
    g = gateway(path, model=models().v1)
    sizes = np.random.default_rng(2).integers(1, 5 * DAY, size=100) * len(meters)
    pos, calls = 0, 0
    for size in sizes.tolist():
        if pos >= len(obj):
            break
        if calls in (7, 15):  # a power cut: the agent starts again from its buffer
            g.close()
            g = gateway(path)
        g.take([row_of(o) for o in obj[pos : pos + size]])
        pos += size
        calls += 1
    assert pos >= len(obj)
    stored = g.buffer.db.conn.execute(
        "select meter_id, ts, kwh, supply_on, score from readings order by meter_id, ts"
    ).fetchall()
    model = g.detector.models.book.models["iforest"]
    profiles = g.buffer.profiles.load(meters)
    g.close()
    assert len(stored) == days * DAY * len(meters)
    meter = np.array([0 if s[0] == "step" else 1 for s in stored])
    ts = np.array([s[1] for s in stored])
    kwh = np.array([s[2] for s in stored])
    x = compute_features_grouped(
        meter,
        ts,
        kwh,
        np.ones(ts.size, bool),
        np.zeros(ts.size, np.uint16),
        np.full(ts.size, np.nan),
        INTERVAL,
        FLAG_BITS,
    )
    expected = np.round(model.score(x).astype(float), 6)
    np.testing.assert_array_equal(np.array([s[4] for s in stored]), expected)
    # The stored profiles are training's, through the day before the newest.
    whole = fold(meter, ts, kwh, np.ones(ts.size, bool), 0, INTERVAL)
    assert profiles == {"step": whole.profiles[0], "steady": whole.profiles[1]}
    last_day = (T0 + days * 86400 - INTERVAL // 2) // 86400
    assert profiles["step"].through_day == last_day - 1
    # And the step is still visible to the long memory eleven days after it.
    step = x[meter == 0]
    assert step[-DAY:, COL["mean_24h_vs_usual"]].mean() < -0.3


def test_a_refused_call_leaves_the_profiles_as_they_were(tmp_path: Path) -> None:
    g = gateway(tmp_path / "b.db", model=models().v1)
    for d in range(4):
        g.take([row_of(reading("m1", k)) for k in range(d * DAY, (d + 1) * DAY)])
    before = g.buffer.profiles.load(["m1"])
    assert before["m1"].through_day == (T0 + 3 * 86400) // 86400 - 1
    g.buffer.readings.cap = g.buffer.readings.pending  # the buffer is full: refuse
    with pytest.raises(BufferFull):
        g.take([row_of(reading("m1", k)) for k in range(4 * DAY, 5 * DAY)])
    assert g.buffer.profiles.load(["m1"]) == before
    g.buffer.readings.cap = 10**6
    g.take([row_of(reading("m1", k)) for k in range(4 * DAY, 5 * DAY)])
    assert g.buffer.profiles.load(["m1"])["m1"].through_day == before["m1"].through_day + 1
    g.close()


def test_the_store_keeps_one_profile_a_meter(tmp_path: Path) -> None:
    buffer = Buffer(tmp_path / "b.db")
    zeros = bytes(8 * PROFILE_HOURS)
    ones = np.ones(PROFILE_HOURS, "<f8").tobytes()
    with buffer.db.transaction():
        buffer.profiles.save(
            {"m1": MeterProfile(20, ones, ones), "m2": MeterProfile(5, ones, ones)}
        )
    with buffer.db.transaction():
        buffer.profiles.save({"m2": MeterProfile(3, zeros, zeros)})
    got = buffer.profiles.load(["m1", "m2", "m3"])
    assert got == {"m1": MeterProfile(20, ones, ones), "m2": MeterProfile(3, zeros, zeros)}
    with pytest.raises(ValueError, match="192 bytes"):
        MeterProfile(1, b"x", zeros)
    size = buffer.db.conn.execute(
        "select sum(length(meter_id) + length(sums) + length(weights) + 8) from meter_profiles"
    ).fetchone()[0]
    assert size / 2 < 8 * 2 * PROFILE_HOURS + 40  # what one meter costs, numbers and key
    buffer.close()


def test_a_profile_from_a_clock_that_ran_ahead_is_dropped() -> None:
    ts = T0 + INTERVAL * np.arange(1, 10 * DAY + 1)
    kwh = np.full(ts.size, 0.5)
    ones = np.ones(ts.size, bool)
    zeros = np.zeros(ts.size, int)
    ahead = fold(zeros, ts + 90 * 86400, kwh, ones, 0, INTERVAL).profiles[0]
    now = fold(zeros, ts, kwh * 3, ones, 0, INTERVAL, {0: ahead})
    assert now.profiles == fold(zeros, ts, kwh * 3, ones, 0, INTERVAL).profiles
    # A few days ahead (a backlog of older readings after newer ones) is kept.
    recent = fold(zeros, ts + 3 * 86400, kwh, ones, 0, INTERVAL).profiles[0]
    late = fold(zeros, ts, kwh * 3, ones, 0, INTERVAL, {0: recent})
    assert late.profiles == {} and late.level_kw[-1] == pytest.approx(1.0)


@pytest.mark.parametrize("damage", [float("nan"), float("inf"), -1.0, 1e300])
def test_a_damaged_profile_is_dropped_not_carried(damage: float) -> None:
    """A stored profile whose numbers cannot be (a bit flipped on the SD card: most flips of an
    exponent bit give a huge finite number) is dropped: the meter starts its memory again rather
    than carrying NaN, a negative or a huge weight for years."""
    ts = T0 + INTERVAL * np.arange(1, 10 * DAY + 1)
    kwh = np.full(ts.size, 0.5)
    ones = np.ones(ts.size, bool)
    zeros = np.zeros(ts.size, int)
    good = fold(zeros, ts[: 5 * DAY], kwh[: 5 * DAY], ones[: 5 * DAY], 0, INTERVAL).profiles[0]
    later = (zeros[5 * DAY :], ts[5 * DAY :], kwh[5 * DAY :], ones[5 * DAY :], 0, INTERVAL)
    kept = fold(*later, {0: good})
    assert kept.profiles != fold(*later).profiles  # a sound profile is carried on
    for field in ("sums", "weights"):
        numbers = np.frombuffer(getattr(good, field), "<f8").copy()
        numbers[7] = damage
        bad = MeterProfile(
            good.through_day,
            *(
                (numbers.tobytes(), good.weights)
                if field == "sums"
                else (good.sums, numbers.tobytes())
            ),
        )
        got = fold(*later, {0: bad})
        assert got.profiles == fold(*later).profiles
        assert np.isfinite(got.level_kw[DAY * 3 :]).all()
