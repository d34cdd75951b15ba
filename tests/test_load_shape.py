"""Load shapes: which meters are intermittent (``ml.load_shape``), the forests fitted per shape
(``ml.modelset``), and why the evaluation pins a meter's shape from its history without theft."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edge_agent.registry import CONTINUOUS, INTERMITTENT, model_keys
from ml.dataset import concat, from_fleet, reading_features
from ml.evaluate import _simulate
from ml.load_shape import MIN_DAYS, decide, near_zero_share
from ml.modelset import (
    ModelSet,
    key_parts,
    member_groups,
    member_key,
    train_model_set,
    usable_class,
)
from simulator import FleetConfig


def test_model_keys_try_the_shape_then_the_class() -> None:
    assert model_keys("urban") == ("urban",)
    assert model_keys("urban", INTERMITTENT) == ("urban.intermittent", "intermittent", "urban")
    assert model_keys("", INTERMITTENT) == ("intermittent",)
    assert model_keys("") == ()
    with pytest.raises(ValueError, match="load_shape"):
        model_keys("urban", "bursty")
    for named_like_a_shape in ("intermittent", "continuous", "urban.intermittent"):
        with pytest.raises(ValueError, match="names a load shape"):
            model_keys(named_like_a_shape)


def test_a_members_class_and_shape_come_back_from_its_name() -> None:
    for c in ("", "urban", "residential_lifeline"):
        for shape in (CONTINUOUS, INTERMITTENT):
            key = member_key(c, shape)
            assert key_parts("iforest", f"iforest.{key}" if key else "iforest") == (c, shape)
    with pytest.raises(ValueError, match="not a member"):
        key_parts("iforest", "other.urban")


def test_the_rule_separates_the_simulated_load_styles() -> None:
    shapes = {}
    for style in ("household", "bursty", "commercial"):
        data = from_fleet(FleetConfig.for_style(style, meters=120, days=16, seed=5, theft_share=0))
        got = decide(data.kwh, data.valid & data.customers[None, :], data.intervals_per_day)
        shapes[style] = got[data.customers]
    assert (shapes["household"] == CONTINUOUS).all()
    assert (shapes["commercial"] == CONTINUOUS).all()
    assert (shapes["bursty"] == INTERMITTENT).mean() > 0.9


def test_near_zero_share_and_the_days_a_decision_needs() -> None:
    ipd = 48
    t = MIN_DAYS * ipd
    on_off = np.tile([0.0, 0.0, 1.0], t // 3 + 1)[:t]  # two thirds near zero
    kwh = np.stack([on_off, np.full(t, 0.3), on_off, np.zeros(t)], axis=1)
    valid = np.ones_like(kwh, dtype=bool)
    valid[ipd:, 2] = False  # one day of valid readings: too little to decide
    share = near_zero_share(kwh, valid)
    assert share[0] == pytest.approx(2 / 3, abs=0.01) and share[1] == 0.0
    # A meter that read nothing at all has no level to be near: it stays continuous, and so is
    # judged by the forests that find its zeros anomalous.
    assert decide(kwh, valid, ipd).tolist() == [INTERMITTENT, CONTINUOUS, CONTINUOUS, CONTINUOUS]
    assert np.isnan(near_zero_share(kwh, np.zeros_like(valid)))[0]


def test_a_shape_taken_from_the_scored_readings_is_one_a_thief_chooses() -> None:
    """Zeroing readings (h2) moves a continuous meter into the intermittent group when the shape
    is decided on the readings themselves; the evaluation's default pins it from the meter's
    history without theft, where no continuous meter is intermittent."""
    fleet = FleetConfig.for_style("household", meters=300, days=21, seed=9, theft_share=0.3)
    window = _simulate(fleet, "window")
    history = _simulate(fleet, "history")
    customers = window.customers
    assert (history.load_shapes[customers] == CONTINUOUS).all()
    chose = customers & (window.load_shapes == INTERMITTENT)
    assert chose.any()  # some thieves moved themselves
    assert window.label_code is not None
    assert (window.label_code[:, chose] > 0).any(axis=0).all()  # ... and only thieves
    assert _simulate(fleet, "none").load_shape is None


def test_intermittent_meters_get_their_own_forests(tmp_path: Path) -> None:
    parts = [
        from_fleet(FleetConfig.for_style(s, meters=90, days=10, seed=3 + i))
        for i, s in enumerate(("household", "bursty"))
    ]
    data = concat(parts, ["h:", "b:"])
    shapes = data.load_shapes
    assert (shapes[: parts[0].n_meters] == CONTINUOUS).all()  # the simulator's registry
    assert (shapes[parts[0].n_meters :][parts[1].customers] == INTERMITTENT).all()
    x = reading_features(data)
    model_set = train_model_set(data, x, variant="per_class", warmup_days=7, max_rows=20_000)
    by_key = {m.key: m for m in model_set.members}
    assert "" in by_key and INTERMITTENT in by_key
    assert any(k.endswith(f".{INTERMITTENT}") for k in by_key)
    assert model_set.training["intermittent_meters"] == int(
        (data.customers & (shapes == INTERMITTENT)).sum()
    )
    for m in model_set.members:
        assert m.name == (f"iforest.{m.key}" if m.key else "iforest")
    for j in np.flatnonzero(data.customers).tolist():
        member = model_set.member_for(data.customer_class[j], shapes[j])
        assert member.load_shape == shapes[j] or member.key == ""
    # The manifest keeps each member's shape.
    model_set.write(tmp_path / "set")
    back = ModelSet.read(tmp_path / "set")
    assert [(m.name, m.load_shape) for m in back.members] == [
        (m.name, m.load_shape) for m in model_set.members
    ]
    # Scored as an intermittent meter or as a continuous one, a bursty meter gets other margins.
    rows = data.present & data.customers[None, :]
    rows[: data.window_start(7)] = False
    as_shaped = model_set.margins(x, data.customer_class, rows, load_shape=shapes)
    as_continuous = model_set.margins(x, data.customer_class, rows)
    bursty = shapes == INTERMITTENT
    assert not np.allclose(as_shaped[:, bursty], as_continuous[:, bursty])
    assert np.array_equal(as_shaped[:, ~bursty], as_continuous[:, ~bursty])


def test_each_member_is_fitted_on_the_meters_it_scores() -> None:
    long = "c" * 60  # its members' names would pass ID_PATTERN's 64 characters
    classes = np.array(["a"] * 30 + ["b"] * 30 + ["urban.intermittent"] * 30 + [long] * 30 + [""])
    shapes = np.array(([CONTINUOUS] * 25 + [INTERMITTENT] * 5) * 4 + [INTERMITTENT])
    fit = np.ones(classes.size, bool)
    assert not usable_class("urban.intermittent") and not usable_class(long)
    groups = member_groups(classes, shapes, fit, per_class=True)
    inter = shapes == INTERMITTENT
    assert set(groups) == {
        ("", CONTINUOUS),
        ("", INTERMITTENT),
        ("a", CONTINUOUS),
        ("b", CONTINUOUS),
    }  # five intermittent meters per class are too few for a class's own
    assert np.array_equal(groups[("", CONTINUOUS)], ~inter)  # intermittent ones have theirs
    assert np.array_equal(groups[("", INTERMITTENT)], inter)
    assert np.array_equal(groups[("a", CONTINUOUS)], (classes == "a") & ~inter)
    only_global = member_groups(classes, np.full(classes.size, CONTINUOUS), fit, per_class=False)
    assert set(only_global) == {("", CONTINUOUS)} and only_global[("", CONTINUOUS)].all()
    # Every meter intermittent: the global member (every meter's fallback) is fitted on them all.
    every = member_groups(classes, np.full(classes.size, INTERMITTENT), fit, per_class=False)
    assert every[("", CONTINUOUS)].all() and every[("", INTERMITTENT)].all()


def test_a_fleet_without_intermittent_meters_fits_no_shape_member() -> None:
    data = from_fleet(FleetConfig(meters=60, days=9, seed=4))
    data = replace(data, load_shape=None)
    model_set = train_model_set(
        data, reading_features(data), variant="per_class", warmup_days=7, max_rows=20_000
    )
    assert all(m.load_shape == CONTINUOUS for m in model_set.members)
