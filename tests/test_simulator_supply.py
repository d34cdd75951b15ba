"""Load-shedding schedules, faults and prepaid credit gaps."""

from __future__ import annotations

import numpy as np

from simulator import Fleet, FleetConfig
from simulator.config import BAND_MIN_HOURS
from simulator.episodes import mask

NO_FAULTS = {"feeder_faults_per_day": 0.0, "transformer_faults_per_day": 0.0}


def _feeder_supply(fleet: Fleet) -> tuple[np.ndarray, list[str]]:
    """(intervals, transformers) supply of each transformer meter, and its feeder."""
    ids, ts, a = fleet.arrays()
    meters = {m["meter_id"]: m for m in fleet.registry().meters}
    tx = [j for j, m in enumerate(ids) if m.startswith("TX-")]
    return a["supply_on"][:, tx], [meters[ids[j]]["feeder_id"] for j in tx]


def test_episode_mask_covers_exactly_the_episodes_clipped_to_the_day() -> None:
    m = mask(3, 6, np.array([0, 1, 2, 2]), np.array([-2, 4, 1, 2]), np.array([3, 5, 1, 2]))
    assert m.astype(int).T.tolist() == [[1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1], [0, 1, 1, 1, 0, 0]]


def test_rotating_shedding_cuts_about_stage_in_groups_hours_a_day() -> None:
    cfg = FleetConfig(
        meters=3000,
        days=6,
        seed=8,
        shedding="rotation",
        stage_probs=(0.2, 0.2, 0.2, 0.2, 0.2),
        stage_persistence=0.0,
        **NO_FAULTS,
    )
    fleet = Fleet(cfg)
    supply, feeders = _feeder_supply(fleet)
    stages = fleet.supply_info()["daily_stage"]
    ipd = fleet.grid.ipd
    assert len(set(stages)) >= 2
    off_h = (~supply).reshape(cfg.days, ipd, -1).sum(axis=1) * cfg.interval_s / 3600
    for d, stage in enumerate(stages):
        expected = stage * 24 / cfg.shedding_groups
        if stage == 0:
            assert (off_h[d] == 0).all()
        else:
            assert abs(off_h[d].mean() - expected) <= 0.25 * expected + 0.5
            # Cuts come in whole blocks of shedding_block_h hours (local clock aligned).
            runs = np.diff(
                np.concatenate([[0], (~supply[d * ipd : (d + 1) * ipd, 0]).astype(int), [0]])
            )
            starts, ends = np.flatnonzero(runs == 1), np.flatnonzero(runs == -1)
            lengths = (ends - starts) * cfg.interval_s / 3600
            inner = (starts > 0) & (ends < ipd)
            assert (lengths[inner] % cfg.shedding_block_h == 0).all()
    # All transformers on one feeder are cut together.
    for f in set(feeders):
        cols = [i for i, x in enumerate(feeders) if x == f]
        assert (supply[:, cols] == supply[:, cols[:1]]).all()


def test_band_feeders_get_at_least_their_guaranteed_hours() -> None:
    cfg = FleetConfig(meters=2500, days=4, seed=9, shedding="bands", **NO_FAULTS)
    fleet = Fleet(cfg)
    supply, feeders = _feeder_supply(fleet)
    band = {f["feeder_id"]: f["band"] for f in fleet.supply_info()["feeders"]}
    on_h = supply.reshape(cfg.days, fleet.grid.ipd, -1).sum(axis=1) * cfg.interval_s / 3600
    minimum = np.array([BAND_MIN_HOURS[band[f]] for f in feeders])
    assert (on_h >= minimum[None, :] - 1e-9).all()
    assert (on_h < 24).any()  # and they are cut
    assert len({band[f] for f in feeders}) >= 3


def test_faults_cut_supply_without_any_shedding() -> None:
    cfg = FleetConfig(
        meters=2000,
        days=5,
        seed=10,
        shedding="none",
        feeder_faults_per_day=0.3,
        transformer_faults_per_day=0.1,
    )
    supply, _ = _feeder_supply(Fleet(cfg))
    assert 0.0 < (~supply).mean() < 0.3
    quiet = FleetConfig(meters=2000, days=5, seed=10, shedding="none", **NO_FAULTS)
    supply, _ = _feeder_supply(Fleet(quiet))
    assert supply.all()


def test_prepaid_gaps_only_hit_prepaid_meters_and_end_with_a_top_up() -> None:
    cfg = FleetConfig(
        meters=1500, days=6, seed=12, shedding="none", theft_share=0.0, fault_share=0.0, **NO_FAULTS
    )
    fleet = Fleet(cfg)
    ids, ts, a = fleet.arrays()
    tariff = {m["meter_id"]: m["tariff"] for m in fleet.registry().meters}
    no_credit = (a["flags"] & 16) > 0
    hit = np.flatnonzero(no_credit.any(axis=0))
    assert len(hit) >= 20
    assert {tariff[ids[j]] for j in hit} == {"prepaid"}
    assert a["supply_on"].all()
    assert (a["kwh"][no_credit] == 0).all() and (a["kwh"][~no_credit] > 0).all()
    # Gaps end: most affected meters read again after their gap.
    ended = [j for j in hit if not no_credit[-1, j]]
    assert len(ended) > 0.6 * len(hit)
