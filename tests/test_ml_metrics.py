"""Evaluation building blocks on hand-made inputs: MAP@k, detection rate at a false-positive
rate, per-customer aggregation, the baselines, and the seed-label reproduction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ml import metrics as mt
from ml.baselines import SAME_HOUR_CUT, rolling_zscore, same_hour_drop, seed_ratio
from ml.evaluate import DEFAULT_SEED_CSV, seed_label_reproduction


def test_map_at_k_by_hand() -> None:
    y = np.array([1, 0, 1, 0, 0, 1], bool)
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    # Ranked: + - + - - +  -> precisions at the hits: 1/1, 2/3, 3/6.
    assert mt.map_at_k(y, s, 6) == pytest.approx((1 + 2 / 3 + 3 / 6) / 3)
    # Top 3: hits at ranks 1 and 3, normalised by min(3, 3 positives) = 3.
    assert mt.map_at_k(y, s, 3) == pytest.approx((1 + 2 / 3) / 3)
    # Top 2: one hit at rank 1, normalised by min(2, 3) = 2 (a short list is not rewarded).
    assert mt.map_at_k(y, s, 2) == pytest.approx(0.5)
    # A perfect ranking scores 1; a reversed one less; no positives gives 0.
    assert mt.map_at_k(y, y.astype(float), 3) == 1.0
    assert mt.map_at_k(y, -s, 3) < mt.map_at_k(y, s, 3)
    assert mt.map_at_k(np.zeros(4, bool), np.arange(4.0), 2) == 0.0
    with pytest.raises(ValueError):
        mt.map_at_k(y, s, 0)


def test_map_at_k_ties_keep_input_order() -> None:
    y = np.array([0, 1], bool)
    assert mt.map_at_k(y, np.array([1.0, 1.0]), 1) == 0.0
    assert mt.map_at_k(y[::-1], np.array([1.0, 1.0]), 1) == 1.0


def test_threshold_and_detection_rate_at_fpr() -> None:
    neg_scores = np.arange(100, dtype=float)  # 0..99
    cut = mt.threshold_at_fpr(neg_scores, 0.05)
    assert (neg_scores > cut).sum() == 5
    assert mt.threshold_at_fpr(neg_scores, 0.0) == 99.0  # flags nothing
    # Ties at the cut: never flag more than the allowed share.
    tied = np.r_[np.full(10, 5.0), np.zeros(90)]
    assert (tied > mt.threshold_at_fpr(tied, 0.05)).mean() <= 0.05

    scores = np.r_[neg_scores, [98.5, 99.5, 200.0, 10.0], [96.0, 0.5]]
    negative = np.r_[np.ones(100, bool), np.zeros(6, bool)]
    groups = np.array([""] * 100 + ["h1"] * 4 + ["bypass"] * 2)
    at5 = mt.detection_rate_at_fpr(scores, negative, groups, 0.05)
    # cut = 94: h1 has 98.5, 99.5, 200 above and 10 below; bypass 96 above, 0.5 below.
    assert at5 == {"bypass": 0.5, "h1": 0.75}
    at1 = mt.detection_rate_at_fpr(scores, negative, groups, 0.01)
    # cut = 98: h1 keeps 98.5, 99.5, 200; bypass loses 96.
    assert at1 == {"bypass": 0.0, "h1": 0.75}
    only = mt.detection_rate_at_fpr(scores, negative, groups, 0.05, names=["h1", "h9"])
    assert only == {"h1": 0.75}


def test_per_customer_aggregation() -> None:
    scores = np.array([[1.0, 5.0, 0.0], [3.0, -1.0, 0.0], [8.0, 2.0, 0.0]])
    mask = np.array([[True, True, False], [True, False, False], [False, True, False]])
    mean = mt.aggregate_per_customer(scores, mask, "mean")
    assert mean[:2] == pytest.approx([2.0, 3.5]) and np.isnan(mean[2])
    frac = mt.aggregate_per_customer(scores, mask, "frac", threshold=2.5)
    assert frac[:2] == pytest.approx([0.5, 0.5])
    per_meter = mt.aggregate_per_customer(scores, mask, "frac", threshold=[0.0, 4.0, 0.0])
    assert per_meter[:2] == pytest.approx([1.0, 0.5])
    assert mt.aggregate_per_customer(scores, mask, "max")[:2] == pytest.approx([3.0, 5.0])
    q = mt.aggregate_per_customer(scores, mask, "quantile", q=0.5)
    assert q[:2] == pytest.approx([2.0, 3.5]) and np.isnan(q[2])
    with pytest.raises(ValueError):
        mt.aggregate_per_customer(scores, mask[:2], "mean")
    with pytest.raises(ValueError):
        mt.aggregate_per_customer(scores, mask, "median")


def test_customer_labels_from_reading_codes() -> None:
    names = ("", "h1", "bypass", "spike")
    codes = np.array([[0, 0, 3, 0], [1, 0, 3, 0], [0, 2, 0, 0]])
    theft, kind = mt.customer_labels(codes, [1, 2], names)
    assert theft.tolist() == [True, True, False, False]
    assert kind.tolist() == ["h1", "bypass", "spike", ""]


def test_roc_and_pr_auc_need_both_classes() -> None:
    assert mt.roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert mt.roc_auc([1, 1], [0.1, 0.2]) is None
    assert mt.pr_auc([0, 0], [0.1, 0.2]) is None
    assert mt.pr_auc([0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8]) == 1.0


def test_baselines_on_a_hand_made_series() -> None:
    kwh = np.array([[1.0], [1.0], [1.0], [1.0], [0.2], [1.0]])
    present = np.ones_like(kwh, bool)
    ratio = seed_ratio(kwh, present, window=4)
    # Window of 4 including the current one: 0.2 / mean(1, 1, 1, 0.2) = 0.2 / 0.8.
    assert ratio[4, 0] == pytest.approx(0.25)
    assert ratio[3, 0] == pytest.approx(1.0)
    assert ratio[5, 0] == pytest.approx(1.0 / 0.8)
    # A reading that is absent does not count and gets the neutral ratio.
    present[4, 0] = False
    assert seed_ratio(kwh, present, window=4)[4, 0] == 1.0
    # An all-zero window (an outage) gives "no evidence", not a division by zero.
    assert seed_ratio(np.zeros((3, 1)), np.ones((3, 1), bool))[2, 0] == 1.0

    series = np.r_[np.tile([1.0, 3.0], 24), [0.0]].reshape(-1, 1)
    z = rolling_zscore(series, np.ones_like(series, bool), window=48)
    assert z[-1, 0] == pytest.approx(-2.0)  # mean 2, std 1
    assert z[0, 0] == 0.0  # no history yet


def test_the_obvious_rule_remembers_a_meters_own_hours_for_four_weeks() -> None:
    """A meter with a daily shape (4 slots a day) steps down to 30 % on day 10 and stays there:
    the same-hour drop flags every slot for the first days and some slot every day for nearly
    two weeks (past the model's 7-day windows); an absent reading and the first days without
    history score 0."""
    day = np.array([1.0, 3.0, 5.0, 2.0])
    kwh = np.tile(day, 40) * np.where(np.arange(160) >= 40, 0.3, 1.0)
    kwh = kwh.reshape(-1, 1)
    present = np.ones_like(kwh, bool)
    present[50, 0] = False
    drop = same_hour_drop(kwh, present, per_day=4)[:, 0]
    assert (drop[:12] == 0).all()  # fewer than three earlier days at that time of day
    assert np.allclose(drop[12:40], 0.0)  # the same shape every day: no drop
    flagged = drop > SAME_HOUR_CUT
    assert flagged[40:50].all() and flagged[51:56].all()  # days 10 to 13, every slot
    assert flagged.reshape(-1, 4)[10:22].any(axis=1).all()  # days 10 to 21, some slot
    assert drop[50] == 0.0
    assert not flagged[-4:].any()  # a month on, the new level is the meter's own


@pytest.mark.skipif(not Path(DEFAULT_SEED_CSV).exists(), reason="seed dataset not available")
def test_seed_labels_are_reproduced() -> None:
    result = seed_label_reproduction(DEFAULT_SEED_CSV)
    assert result["rows"] == 5000 and result["errors"] == 0
    assert result["abnormal_labels"] == 250
    assert result["agreement"] >= 0.99


def test_seed_reproduction_disagrees_with_other_labels(tmp_path: Path) -> None:
    """The agreement is a real comparison: flipping labels in the file lowers it."""
    if not Path(DEFAULT_SEED_CSV).exists():
        pytest.skip("seed dataset not available")
    lines = Path(DEFAULT_SEED_CSV).read_text().splitlines()
    flipped = [lines[0]]
    for i, line in enumerate(lines[1:]):
        if i % 10 == 0:
            line = (
                line.replace("Normal", "X").replace("Abnormal", "Normal").replace("X", "Abnormal")
            )
        flipped.append(line)
    path = tmp_path / "flipped.csv"
    path.write_text("\n".join(flipped) + "\n")
    assert seed_label_reproduction(path)["agreement"] == pytest.approx(0.9, abs=1e-9)
