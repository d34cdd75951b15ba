"""Local time: every time-of-day and calendar-day feature is computed on the meter's own clock
(an IANA zone, daylight saving included), at the gateway and in training."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from edge_agent.feature_spec import DEFAULT_FLAG_BITS
from edge_agent.features import FEATURE_NAMES, compute_features
from edge_agent.localtime import MeterClocks, UnknownZoneError, utc_offsets, zone_offsets
from edge_agent.registry import meter_zones
from edge_agent.settings import load_settings
from tests.support.detection import INTERVAL, daily_kwh, gateway, models, reading, row_of

AT = {name: i for i, name in enumerate(FEATURE_NAMES)}
LOCAL_CLOCK = ("hour_sin", "hour_cos", "evening_share_7d", "night_level_7d", "today_vs_best_6d")


def epoch(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp())


def test_offsets_follow_the_zone_and_its_daylight_saving() -> None:
    ts = np.array([epoch(2025, 1, 1), epoch(2025, 7, 1, 12)])
    assert utc_offsets(ts, "Africa/Lagos").tolist() == [3600, 3600]
    assert utc_offsets(ts, "Africa/Nairobi").tolist() == [10800, 10800]
    assert utc_offsets(ts, "UTC").tolist() == [0, 0]
    # London leaves GMT at 01:00 UTC on 2024-03-31 and comes back at 01:00 UTC on 2024-10-27
    spring, autumn = epoch(2024, 3, 31, 1), epoch(2024, 10, 27, 1)
    around = np.array([spring - 1, spring, autumn - 1, autumn])
    assert utc_offsets(around, "Europe/London").tolist() == [0, 3600, 3600, 0]
    # a span of years takes the other path (only the buckets that hold a reading)
    years = np.array([epoch(2020, 1, 15), epoch(2024, 7, 15), epoch(2027, 1, 15)])
    assert utc_offsets(years, "Europe/London").tolist() == [0, 3600, 0]
    rows = zone_offsets(np.r_[ts, ts], [0, 0, 1, 1], ["Africa/Lagos", "Africa/Nairobi"])
    assert rows.tolist() == [3600, 3600, 10800, 10800]
    # a corrupt timestamp far outside the calendar does not fail the call
    wild = np.array([-(2**62), 0, 2**62], dtype=np.int64)
    assert utc_offsets(wild, "Africa/Lagos").tolist()[1] == 3600


def test_offsets_over_years_match_each_reading_looked_up_alone() -> None:
    """The path for spans of years (only the buckets that hold a reading are looked up) gives
    each reading, in any order and shape, repeated or not, the offset it has when looked up
    alone."""
    rng = np.random.default_rng(3)
    ts = rng.integers(epoch(2019, 1, 1), epoch(2027, 1, 1), 400)
    ts = np.concatenate([ts, ts[:50]])
    rng.shuffle(ts)
    grid = ts.reshape(25, 18)
    got = utc_offsets(grid, "Europe/London")
    alone = [int(utc_offsets(np.array([t]), "Europe/London")[0]) for t in ts.tolist()]
    assert got.shape == grid.shape
    assert got.ravel().tolist() == alone
    assert set(alone) == {0, 3600}


@pytest.mark.parametrize(
    "name",
    ["Mars/Olympus_Mons", "../../etc/passwd", "", "Africa/lagos ", "Africa", "Etc", "x" * 300],
)
def test_an_unknown_zone_is_refused_with_a_clear_error(name: str) -> None:
    with pytest.raises(UnknownZoneError, match="unknown time zone"):
        utc_offsets([0], name)
    with pytest.raises(ValidationError, match="unknown time zone"):
        load_settings(timezone=name)
    with pytest.raises(ValueError, match="registry meter 'm1'.*unknown time zone"):
        meter_zones([{"meter_id": "m1", "timezone": name or "x"}])


def meter(days: int, start: int, local_hours: tuple[int, ...], zone: str) -> dict[str, Any]:
    """A meter that draws 1 kWh a half hour in the given LOCAL hours and 0.05 otherwise."""
    ts = start + INTERVAL * np.arange(1, days * 48 + 1, dtype=np.int64)
    local_start = ts - INTERVAL + utc_offsets(ts - INTERVAL, zone)
    hour = (local_start % 86400) // 3600
    kwh = np.where(np.isin(hour, local_hours), 1.0, 0.05)
    return {"ts": ts, "kwh": kwh}


def features(m: dict[str, Any], offsets: Any) -> np.ndarray:
    n = m["ts"].shape[0]
    return compute_features(
        m["ts"],
        m["kwh"],
        np.ones(n, np.bool_),
        np.zeros(n, np.uint16),
        np.full(n, np.nan),
        INTERVAL,
        DEFAULT_FLAG_BITS,
        utc_offset_s=offsets,
    )


@pytest.mark.parametrize(("zone", "offset_h"), [("Africa/Lagos", 1), ("Africa/Nairobi", 3)])
def test_a_fixed_zone_is_the_utc_features_of_a_shifted_clock(zone: str, offset_h: int) -> None:
    """Lagos (UTC+1) and Nairobi (UTC+3): the features of a meter in that zone are those of the
    same readings in UTC moved by the offset, and differ from the UTC ones."""
    m = meter(14, epoch(2025, 5, 1), (18, 19, 20, 21), zone)
    local = features(m, utc_offsets(m["ts"], zone))
    shifted = features({**m, "ts": m["ts"] + offset_h * 3600}, 0)
    assert np.array_equal(local, shifted)
    in_utc = features(m, 0)
    for name in ("hour_sin", "evening_share_7d"):
        assert not np.allclose(local[:, AT[name]], in_utc[:, AT[name]]), name


@pytest.mark.parametrize(
    "start", [epoch(2024, 3, 17), epoch(2024, 10, 13)], ids=["spring", "autumn"]
)
def test_features_keep_the_local_hours_across_a_daylight_saving_change(start: int) -> None:
    """A London meter used 17-18 h local every day, four weeks around a DST change: its evening
    share stays the same through the change and its 17:xx readings stay at 17:xx; on a fixed
    UTC clock, in summer time, the hour moves and that hour leaves the evening."""
    zone = "Europe/London"
    m = meter(28, start, (17,), zone)
    local = features(m, utc_offsets(m["ts"], zone))
    fixed = features(m, 0)
    weeks = m["ts"] > start + 8 * 86400  # a full week of history
    evening = (2 * 1.0 + 10 * 0.05) / (2 * 1.0 + 46 * 0.05)  # 17-23 h of one day, of the day
    # (a 7-day window holding the 23- or 25-hour day is not seven whole local days: +-0.04)
    assert np.allclose(local[weeks, AT["evening_share_7d"]], evening, atol=0.04)
    lit = m["kwh"] == 1.0
    angle = np.arctan2(local[lit, AT["hour_sin"]], local[lit, AT["hour_cos"]]) % (2 * math.pi)
    assert np.allclose(angle[::2], 2 * math.pi * 17.25 / 24, atol=1e-4)  # 17:00-17:30
    assert np.allclose(angle[1::2], 2 * math.pi * 17.75 / 24, atol=1e-4)  # 17:30-18:00
    summer = utc_offsets(m["ts"], zone) == 3600
    assert summer.any() and (~summer).any()
    moved = np.arctan2(fixed[:, AT["hour_sin"]], fixed[:, AT["hour_cos"]])
    assert not np.allclose(moved[lit & summer], np.arctan2(*local[lit & summer][:, :2].T))
    summer_days = np.convolve(summer, np.ones(7 * 48), "full")[: len(summer)]
    summer_week = weeks & (summer_days >= 7 * 48)  # a week of summer time behind
    assert summer_week.any()
    assert fixed[summer_week, AT["evening_share_7d"]].max() < 0.2


def test_clocks_of_meters_name_their_own_zone_else_the_gateways() -> None:
    clocks = MeterClocks("Africa/Nairobi", {"m2": "Africa/Lagos"})
    ts = np.full(3, epoch(2025, 1, 1))
    assert clocks.offsets(["m1", "m2"], [0, 1, 0], ts).tolist() == [10800, 3600, 10800]
    assert MeterClocks().offsets(["m1"], [0], ts[:1]).tolist() == [0]


def _scores(tmp: Path, name: str, timezone: str, shift: int) -> dict[str, list[float]]:
    """Ten days of two meters through a gateway in ``timezone``, their readings moved ``shift``
    intervals later (the same energies); meter "b" is in UTC by the registry."""
    gw = gateway(
        tmp / f"{name}.db",
        model=models().v1,
        timezone=timezone,
        meters=[{"meter_id": "b", "timezone": "UTC"}],
    )
    try:
        for d in range(10):
            ks = range(d * 48, d * 48 + 48)
            gw.take([row_of(reading(m, k + shift, kwh=daily_kwh(k))) for k in ks for m in "ab"])
        rows = gw.buffer.db.conn.execute(
            "select meter_id, score from readings order by meter_id, ts"
        ).fetchall()
    finally:
        gw.close()
    out: dict[str, list[float]] = {"a": [], "b": []}
    for meter_id, score in rows:
        assert score is not None
        out[meter_id].append(score)
    return out


def test_the_agent_scores_each_meter_on_its_own_clock(tmp_path: Path) -> None:
    """Meter "a" on a Nairobi gateway scores as the same energies three hours later on a UTC
    gateway; meter "b", in UTC by the registry, as on a UTC gateway."""
    nairobi = _scores(tmp_path, "nbo", "Africa/Nairobi", 0)
    utc = _scores(tmp_path, "utc", "UTC", 0)
    utc_later = _scores(tmp_path, "later", "UTC", 6)
    assert nairobi["a"] == utc_later["a"]
    assert nairobi["b"] == utc["b"]
    assert nairobi["a"] != utc["a"]


def test_training_features_use_each_meters_zone() -> None:
    """``ml.dataset``: the simulator's registry gives every meter its region's zone, and the
    training features of a meter are the edge's features on that meter's clock."""
    from ml.dataset import from_fleet, from_rows, reading_features
    from simulator import FleetConfig

    data = from_fleet(FleetConfig(meters=80, days=1, seed=3, region_codes=("LOS", "NBO")))
    assert set(data.timezone.tolist()) == {"Africa/Lagos", "Africa/Nairobi"}
    m = meter(9, epoch(2025, 5, 1), (19, 20), "Africa/Nairobi")
    n = m["ts"].shape[0]
    zoned = from_rows(
        ["x"] * n,
        m["ts"],
        m["kwh"],
        np.full(n, np.nan),
        np.ones(n, np.bool_),
        np.zeros(n, np.uint16),
        INTERVAL,
        DEFAULT_FLAG_BITS,
        meters={"x": {"timezone": "Africa/Nairobi"}},
    )
    got = reading_features(zoned)[:, 0]
    assert np.array_equal(got, features(m, utc_offsets(m["ts"], "Africa/Nairobi")))
    assert not np.array_equal(got, features(m, 0))


def test_simulated_regions_keep_one_offset_all_year() -> None:
    from simulator import REGION_TEMPLATES, RegionSpec

    assert {r.code: r.utc_offset_s // 3600 for r in REGION_TEMPLATES}["NBO"] == 3
    london = RegionSpec(
        "LON", "London", 51.5, -0.1, "Europe/London", 11, 7, 200, 4, 75, 10, 330, 4, "none"
    )
    with pytest.raises(ValueError, match="changes its offset"):
        london.utc_offset_s  # noqa: B018


def test_central_trains_an_unzoned_meter_in_the_zone_its_gateway_reports(pg_dsn: str) -> None:
    """``raw.meters.timezone`` first; a meter without one takes the zone its gateway last
    reported in ``status.v1`` (the zone the gateway scores it in); a zone the database does not
    know is ignored; UTC only when nothing names one. status.v1 refuses what is not a zone."""
    import json
    from datetime import timedelta

    import psycopg

    from edge_agent import wire
    from ml.dataset import from_postgres

    t0 = datetime(2025, 5, 1, tzinfo=UTC)
    with psycopg.connect(pg_dsn) as conn:
        for meter_id, zone_name, gw in (
            ("m-reg", "Africa/Lagos", "gw-1"),
            ("m-gw", None, "gw-1"),
            ("m-bad", None, "gw-2"),
            ("m-none", None, "gw-3"),
        ):
            conn.execute(
                "insert into raw.meters (meter_id, timezone, gateway_id) values (%s, %s, %s)",
                (meter_id, zone_name, gw),
            )
            conn.execute(
                "insert into raw.readings (meter_id, ts, interval_s, kwh, gateway_id, batch_id)"
                " select %s, %s + k * interval '30 min', 1800, 0.1, %s, 'b1'"
                " from generate_series(1, 96) k",
                (meter_id, t0, gw),
            )
        for gw, zone_name, ago in (
            ("gw-1", "Africa/Douala", 2),  # an older status: the latest one counts
            ("gw-1", "Africa/Nairobi", 1),
            ("gw-2", "Mars/Olympus_Mons", 1),
        ):
            status = {"schema": "status.v1", "gateway_id": gw, "timezone": zone_name}
            conn.execute(
                "insert into raw.gateway_status (gateway_id, sent_at, state, status)"
                " values (%s, %s, 'online', %s)",
                (gw, t0 - timedelta(hours=ago), json.dumps(status)),
            )
    data = from_postgres(pg_dsn, t0, t0 + timedelta(days=2), with_history=False)
    zones = dict(zip(data.meter_ids.tolist(), data.timezone.tolist(), strict=True))
    assert zones == {
        "m-reg": "Africa/Lagos",
        "m-gw": "Africa/Nairobi",
        "m-bad": "UTC",
        "m-none": "UTC",
    }
    assert data.source["meters_without_timezone"] == 2
    sent = datetime(2025, 5, 1, tzinfo=UTC)
    assert (
        wire.Status(
            gateway_id="gw-1", state="online", sent_at=sent, timezone="Africa/Nairobi"
        ).timezone
        == "Africa/Nairobi"
    )
    with pytest.raises(ValidationError):
        wire.Status(gateway_id="gw-1", state="online", sent_at=sent, timezone="../../etc/passwd")
