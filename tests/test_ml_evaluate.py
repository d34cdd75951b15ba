"""End to end: `python -m ml.evaluate` on tiny fleets, how well the model detects theft on a small
one (and that a scorer knowing nothing fails those bounds), the `python -m ml` CLI, and the data
path (dense grids, edge features, customer features) it relies on."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from edge_agent.features import FEATURE_NAMES
from edge_agent.localtime import zone_offsets
from ml import customer, evaluate
from ml.baselines import OBVIOUS_RULE
from ml.dataset import from_fleet, from_rows, reading_features
from ml.evaluate import EvalConfig
from ml.modelset import ModelSet
from ml.train import features_for
from simulator import FLAG_BIT, FleetConfig

REPO = Path(__file__).resolve().parents[1]

# The small fleet detection quality is measured on (about 7 s on 2 cores): the model trained on
# 300 meters, evaluated on 1,000 others with 10 % thieves (a few of each theft type), 14 days
# each: 7 of feature history, 7 measured.
SMALL = EvalConfig(
    train_meters=300,
    train_days=14,
    train_seed=11,
    eval_meters=1000,
    eval_days=14,
    eval_seed=12,
    eval_theft_share=0.1,
    threads=1,
    leave_one_out=False,
)

# What the model must reach on SMALL. Each bound sits well below the worst of 20 seed pairs and
# well above what a scorer that knows nothing gets (the test of that below).
QUALITY_BOUNDS = {
    # The inspection list: thieves rank above honest and faulty customers...
    "customer_roc_auc": 0.85,
    # ... and fill its top 100.
    "customer_map_at_100": 0.45,
    # Theft readings score above normal ones.
    "reading_roc_auc": 0.75,
    # Share of a type's readings flagged at the cut that flags 5 % of normal readings (a random
    # scorer: 0.05). Readings zeroed (h2) are clear; readings scaled by a fresh factor each
    # interval (h3) or cut at night or all day (bypass) less so. h1 (one factor 0.1-0.8 on every
    # reading) has no bound: with a mild factor it looks like an honest small consumer reading
    # by reading, so it is left to the customer level.
    "reading_detection_at_5pct_fpr_h2": 0.6,
    "reading_detection_at_5pct_fpr_h3": 0.15,
    "reading_detection_at_5pct_fpr_bypass": 0.15,
    # The model beats the best of the seed project's baselines by a clear margin...
    "customer_roc_auc_over_best_baseline": 0.15,
    "customer_map_at_100_over_best_baseline": 0.15,
    "reading_roc_auc_over_best_baseline": 0.15,
    # ... and the obvious rule (a meter's drop against its own same-hour mean over four weeks),
    # a far stronger one on the simulator's step-like thefts (0.085 on SMALL when it came in).
    "customer_roc_auc_over_obvious_rule": 0.02,
}


def quality(result: dict[str, Any]) -> dict[str, float | None]:
    """The figures ``QUALITY_BOUNDS`` bounds, from an evaluation result (None: not measured)."""
    cust, read = result["customer"], result["reading"]
    detection = read["model"]["at_5pct_fpr"]["detection"]
    seed = [b for b in result["baselines"] if not b.startswith(OBVIOUS_RULE)]
    rule = [b for b in result["baselines"] if b.startswith(OBVIOUS_RULE)]

    def over(table: dict[str, Any], metric: str, names: list[str]) -> float:
        return float(table["model"][metric] - max(table[b][metric] for b in names))

    return {
        "customer_roc_auc": cust["model"]["roc_auc"],
        "customer_map_at_100": cust["model"]["map_at_100"],
        "reading_roc_auc": read["model"]["roc_auc"],
        "reading_detection_at_5pct_fpr_h2": detection.get("h2"),
        "reading_detection_at_5pct_fpr_h3": detection.get("h3"),
        "reading_detection_at_5pct_fpr_bypass": detection.get("bypass"),
        "customer_roc_auc_over_best_baseline": over(cust, "roc_auc", seed),
        "customer_map_at_100_over_best_baseline": over(cust, "map_at_100", seed),
        "reading_roc_auc_over_best_baseline": over(read, "roc_auc", seed),
        "customer_roc_auc_over_obvious_rule": over(cust, "roc_auc", rule),
    }


def shortfalls(result: dict[str, Any]) -> dict[str, float | None]:
    """The figures of ``result`` below their bound in ``QUALITY_BOUNDS``."""
    return {
        name: value
        for name, value in quality(result).items()
        if value is None or not value >= QUALITY_BOUNDS[name]
    }


def _run(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize("style", ["bursty", None], ids=["one_style", "every_style"])
def test_evaluate_tiny_fleet_prints_json_last(tmp_path: Path, style: str | None) -> None:
    """One style (``--style``): trained and evaluated on it. Every style (the default): trained
    on all, each evaluated on its own held-out fleet, every target per style, and the customer
    scorer fitted without a style scored on it."""
    from simulator import LOAD_STYLES

    out = tmp_path / "result.json"
    proc = _run(
        "-m",
        "ml.evaluate",
        "--train-meters",
        "150",
        "--eval-meters",
        "200",
        "--days",
        "10",
        "--train-seed",
        "11",
        "--eval-seed",
        "21",
        "--no-leave-one-out",
        "--threads",
        "1",
        "--out",
        str(out),
        *(["--style", style] if style else []),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert json.loads(out.read_text()) == result
    assert len(lines) > 10  # a human-readable report comes first
    if style is None:
        assert set(result["styles"]) == set(LOAD_STYLES)
        assert result["config"]["train_styles"] == list(LOAD_STYLES)
        assert result["config"]["style"] == ""  # every style
        parts = result["train_fleet"]["parts"]
        assert [p["seed"] for p in parts] == [11, 12, 13][: len(LOAD_STYLES)]
        for s in LOAD_STYLES:
            assert result["styles"][s]["eval_fleet"]["seed"] == 21
            assert result["styles"][s]["style"] == s
            per_style = {n.removesuffix(f"_{s}") for n in result["targets"] if n.endswith(s)}
            assert set(result["styles"][s]["targets"]) < per_style  # plus leave_style_out
            out_of_style = result["targets"][f"customer_roc_auc_leave_style_out_{s}"]
            assert 0.0 <= out_of_style["value"] <= 1.0 and out_of_style["target"] == 0.9
            transfer = result["styles"][s]["customer_transfer_roc_auc"]
            assert out_of_style["value"] == transfer["leave_style_out"]
            assert 0.0 <= transfer["leave_style_out_classifier"] <= 1.0  # reported beside it
        return
    assert result["style"] == style and result["config"]["train_styles"] == [style]
    assert result["train_fleet"]["seed"] == 11 and result["eval_fleet"]["seed"] == 21
    assert result["reading_model"]["variant"] in ("global", "per_class")
    assert set(result["reading_model"]["validation"]["results"]) == {"global", "per_class"}
    baselines = [
        "seed_ratio",
        "seed_ratio_supply_aware",
        "rolling_zscore",
        "rolling_zscore_supply_aware",
        "same_hour_drop",
        "same_hour_drop_supply_aware",
    ]
    assert result["baselines"] == baselines
    for name in ["model", *baselines]:
        r = result["reading"][name]
        assert 0.0 <= r["roc_auc"] <= 1.0 and 0.0 <= r["pr_auc"] <= 1.0
        for key in ("at_1pct_fpr", "at_5pct_fpr"):
            assert r[key]["detection"] and {"fpr_shedding", "fpr_no_credit"} <= set(r[key])
        assert r["shedding_readings"] > 0 and r["after_shedding_readings"] > 0
        for key in ("native", "at_1pct_fpr", "at_5pct_fpr"):
            assert {"fpr_after_shedding", "fpr_after_no_credit"} <= set(r[key])
    for name in ["model", "classifier", "edge_score_mean", "peer_unsupervised", *baselines]:
        c = result["customer"][name]
        assert {"roc_auc", "pr_auc", "map_at_100", "at_1pct_fpr", "at_5pct_fpr"} <= set(c)
        assert 0.0 <= c["map_at_100"] <= 1.0
        assert c["customers"] == 200 and c["thieves"] > 0
    # Outages and empty prepaid meters give neutral features: at the model's own threshold the
    # model flags at most the 1 % of them (one reading of a tiny fleet may stray: the
    # long-memory level sets a meter's "no change" apart from its usual rows).
    model = result["reading"]["model"]
    assert model["native"]["fpr_shedding"] <= 0.01 and model["native"]["fpr_no_credit"] <= 0.01
    # At the cut that flags 5 % of the normal readings, outage readings less than half as often.
    assert model["at_5pct_fpr"]["fpr_shedding"] <= 0.025
    # ... whereas the seed's rule, blind to outages, flags most of them.
    assert result["reading"]["seed_ratio"]["native"]["fpr_shedding"] > 0.5
    assert result["seed_labels"].get("agreement", 1.0) >= 0.99 or "skipped" in result["seed_labels"]
    targets = result["targets"]
    assert {
        "customer_roc_auc",
        "customer_map_at_100",
        "reading_fpr_shedding_at_5pct_fpr",
        "customer_detection_at_5pct_fpr_bypass",
        "reading_detection_at_5pct_fpr_h1_fixed",
        "reading_margin_over_obvious_rule",
        "customer_margin_over_obvious_rule",
    } <= set(targets)
    for name, t in targets.items():
        if name.endswith("_over_obvious_rule"):  # the types where the rule detects > 0.5
            assert set(t) == {"value", "target", "met", "by_type"}
            assert all(v["rule"] > 0.5 for v in t["by_type"].values())
        else:
            assert set(t) == {"value", "target", "best_baseline", "margin_over_baselines", "met"}


def _run_small(tmp_path: Path, **changes: Any) -> dict[str, Any]:
    """``ml.evaluate.run`` on ``SMALL`` (the seed-label check skipped: not what is tested)."""
    from ml.evaluate import run

    cfg = dataclasses.replace(SMALL, seed_csv=str(tmp_path / "absent.csv"), **changes)
    return run(cfg, log=lambda _: None)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``SMALL`` evaluated once for the tests that read it as it is."""
    return _run_small(tmp_path_factory.mktemp("small"))


def test_evaluation_meets_the_quality_bounds(small: dict[str, Any]) -> None:
    assert shortfalls(small) == {}, quality(small)


def test_the_forest_seed_draws_other_forests_and_the_bounds_still_hold(
    small: dict[str, Any], tmp_path: Path
) -> None:
    """``--forest-seed`` reaches the reading forests (other scores on the same fleets), is
    recorded, and the bounds hold on another draw of the forests too."""
    first = small
    again, other = (_run_small(tmp_path, forest_seed=s) for s in (0, 1))
    assert first["config"]["forest_seed"] == 0 and other["config"]["forest_seed"] == 1
    read = [r["reading"]["model"]["roc_auc"] for r in (first, again, other)]
    assert read[0] == read[1] != read[2], read  # the same seed, the same forests
    assert first["reading"]["rolling_zscore"] == other["reading"]["rolling_zscore"]  # same data
    assert shortfalls(other) == {}, quality(other)


@pytest.mark.parametrize("scorer", ["noise", "constant"])
def test_a_scorer_that_knows_nothing_fails_every_bound(
    scorer: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The same evaluation, with the gateway model's margins and the customer model's scores
    replaced by noise or by one constant: every quality bound must catch it."""
    rng = np.random.default_rng(0)

    def useless(shape: tuple[int, ...]) -> npt.NDArray[np.float64]:
        return rng.standard_normal(shape) if scorer == "noise" else np.zeros(shape)

    def margins(
        self: ModelSet, features: Any, classes: Any, rows: npt.NDArray[np.bool_], **_: Any
    ) -> npt.NDArray[np.float64]:
        return np.where(rows, useless(rows.shape), 0.0)

    def score(self: customer.CustomerScorer, feats: customer.CustomerFeatures) -> Any:
        return useless(feats.meter_index.shape)

    def peers(feats: customer.CustomerFeatures) -> Any:
        return useless(feats.meter_index.shape)

    monkeypatch.setattr(ModelSet, "margins", margins)
    monkeypatch.setattr(customer.CustomerScorer, "score", score)
    monkeypatch.setattr(evaluate, "peer_score", peers)  # the inspection list's other half
    result = _run_small(tmp_path)
    assert set(shortfalls(result)) == set(QUALITY_BOUNDS), quality(result)


def test_recovery_masks_mark_the_valid_readings_after_an_outage_or_a_credit_gap() -> None:
    from ml.evaluate import recovery_masks

    n = 14
    ts = 1_700_000_000 + 1800 * np.arange(1, n + 1)
    on = np.ones(n, dtype=bool)
    on[2:4] = False  # an outage: slots 2-3
    flags = np.zeros(n, dtype=np.uint16)
    flags[8] = FLAG_BIT["no_credit"]  # no credit: slot 8
    data = from_rows(["m1"] * n, ts, np.full(n, 0.3), np.full(n, np.nan), on, flags, 1800, FLAG_BIT)
    after_shed, after_credit = recovery_masks(data, hours=1.5)  # 3 slots
    assert np.flatnonzero(after_shed[:, 0]).tolist() == [4, 5, 6]
    assert np.flatnonzero(after_credit[:, 0]).tolist() == [9, 10, 11]


def test_evaluate_refuses_the_training_fleet() -> None:
    from ml.evaluate import EvalConfig, run

    with pytest.raises(ValueError, match="must not be a training fleet"):
        run(EvalConfig(train_seed=3, eval_seed=3))
    styles = ("household", "bursty", "commercial")  # training fleets 3, 4 and 5
    with pytest.raises(ValueError, match="must not be a training fleet"):
        run(EvalConfig(train_seed=3, eval_seed=5, train_styles=styles))


def test_cli_help_and_train_writes_a_model_directory(tmp_path: Path) -> None:
    proc = _run("-m", "ml", "--help")
    assert proc.returncode == 0
    for command in ("keygen", "train", "publish", "evaluate", "models"):
        assert command in proc.stdout
        sub = _run("-m", "ml", command, "--help")
        assert sub.returncode == 0 and "usage:" in sub.stdout

    keys = tmp_path / "keys" / "signing.pem"
    proc = _run("-m", "ml", "keygen", "--private", str(keys))
    assert proc.returncode == 0, proc.stderr
    assert keys.stat().st_mode & 0o777 == 0o600 and keys.with_suffix(".pub").exists()
    assert _run("-m", "ml", "keygen", "--private", str(keys)).returncode != 0  # no overwrite
    pem, pub = keys.read_bytes(), keys.with_suffix(".pub").read_text()
    agents = tmp_path / "agents" / "model.pub"  # provisioning: the key kept, its public half again
    again = _run(
        "-m", "ml", "keygen", "--private", str(keys), "--public", str(agents), "--if-missing"
    )
    assert again.returncode == 0, again.stderr
    assert keys.read_bytes() == pem and agents.read_text() == pub and pub.strip() in again.stdout

    out = tmp_path / "model"
    proc = _run(
        "-m",
        "ml",
        "train",
        "--out",
        str(out),
        "--meters",
        "80",
        "--days",
        "9",
        "--variant",
        "global",
        "--max-rows",
        "20000",
        "--version",
        "v-test-1",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    model_set = ModelSet.read(out)
    assert model_set.version == "v-test-1" and model_set.variant == "global"
    assert model_set.feature_names == FEATURE_NAMES
    (member,) = model_set.members
    assert (out / "iforest.onnx").read_bytes() == member.onnx
    manifest = json.loads((out / "model.json").read_text())
    assert manifest["members"][0]["offset"] == member.offset
    assert member.calibration is not None  # offset is the raw threshold, threshold its level
    assert member.calibration.level_of(-member.offset) == pytest.approx(member.threshold)
    assert manifest["training"]["window_start"] < manifest["training"]["window_end"]
    # Tampering with the ONNX file is caught when the directory is read.
    (out / "iforest.onnx").write_bytes(member.onnx + b"x")
    with pytest.raises(ValueError, match="sha256"):
        ModelSet.read(out)


def test_dense_grid_and_features_match_the_edge_code() -> None:
    data = from_fleet(FleetConfig(meters=40, days=9, seed=8))
    x = reading_features(data)
    t_n, m_n = data.kwh.shape
    meter = np.broadcast_to(np.arange(m_n)[None, :], (t_n, m_n)).ravel()
    ts = np.broadcast_to(data.ts[:, None], (t_n, m_n)).ravel()
    direct = features_for(
        meter,
        ts,
        data.kwh.ravel(),
        data.supply_on.ravel(),
        data.flags.ravel(),
        data.register_kwh.ravel(),
        data.interval_s,
        FLAG_BIT,
        utc_offset_s=zone_offsets(ts, meter, data.timezone.tolist()),
    )
    assert np.array_equal(x.reshape(-1, len(FEATURE_NAMES)), direct)

    # Long rows with a gap onto the grid: the missing slot is absent, the rest in place.
    keep = np.ones((t_n, m_n), bool)
    keep[5, 3] = False
    rows = from_rows(
        data.meter_ids[None, :].repeat(t_n, 0)[keep],
        ts.reshape(t_n, m_n)[keep],
        data.kwh[keep],
        data.register_kwh[keep],
        data.supply_on[keep],
        data.flags[keep],
        data.interval_s,
        FLAG_BIT,
    )
    col = int(np.flatnonzero(rows.meter_ids == data.meter_ids[3])[0])
    assert rows.present.sum() == keep.sum() and not rows.present[5, col]
    assert np.array_equal(rows.ts, data.ts)
    assert rows.kwh[6, col] == data.kwh[6, 3]


def test_customer_features_and_peer_groups() -> None:
    data = from_fleet(FleetConfig(meters=120, days=10, seed=9, theft_share=0.2))
    start = data.window_start(7)
    margin = np.zeros(data.kwh.shape)
    feats = customer.customer_features(data, margin, start)
    cust = np.flatnonzero(data.customers)
    assert np.array_equal(feats.meter_index, cust)
    assert feats.values.shape == (cust.size, len(customer.FEATURE_NAMES))
    assert np.isfinite(feats.values).all()
    groups = customer.peer_groups(data, data.customers)
    members = np.sum([m.astype(int) for m, _ in groups], axis=0)
    assert np.array_equal(members, data.customers.astype(int))  # a partition of the customers
    for m, ref in groups:
        assert ref[m].all()  # a customer is always among its own reference peers
        same_class = (data.customer_class[ref] == data.customer_class[m][0]).all()
        assert same_class or np.array_equal(ref, data.customers)
    # A meter flagged on every reading by the gateway model stands out in the aggregates.
    margin[:, cust[0]] = 1.0
    again = customer.customer_features(data, margin, start)
    share = customer.FEATURE_NAMES.index("flag_share")
    assert again.values[0, share] == 1.0 and again.values[1:, share].max() == 0.0


def test_peers_share_a_load_shape_where_enough_customers_of_the_class_do() -> None:
    """Customers of the biggest class pinned intermittent, enough of them: each is compared
    with intermittent customers of the class only, and its continuous customers with
    continuous ones. Too few pinned: they are compared with their class (in their region when
    enough share it), as before."""
    data = from_fleet(FleetConfig(meters=300, days=3, seed=9))
    klass = data.customer_class
    names, counts = np.unique(klass[data.customers], return_counts=True)
    big = names[np.argmax(counts)]
    in_big = np.flatnonzero(data.customers & (klass == big))
    assert in_big.size >= 2 * customer.MIN_PEERS + 2

    def groups_of_big(intermittent: int) -> tuple[npt.NDArray[np.str_], list[Any]]:
        shape = np.full(data.n_meters, "continuous", dtype="<U12")
        shape[in_big[:intermittent]] = "intermittent"
        pinned = dataclasses.replace(data, load_shape=shape)
        groups = customer.peer_groups(pinned, pinned.customers)
        return shape, [(m, ref) for m, ref in groups if (klass[m] == big).all()]

    shape, groups = groups_of_big(customer.MIN_PEERS + 2)
    assert {s for m, _ in groups for s in shape[m].tolist()} == {"continuous", "intermittent"}
    for m, ref in groups:
        assert len(set(shape[m].tolist())) == 1
        assert set(shape[ref].tolist()) == set(shape[m].tolist())
    shape, groups = groups_of_big(customer.MIN_PEERS - 1)
    whole_class = data.customers & (klass == big)
    rare = [(m, ref) for m, ref in groups if (shape[m] == "intermittent").all()]
    assert rare
    for m, ref in rare:  # their class in their region, else their whole class: both shapes
        assert not (ref & ~whole_class).any() and ref[m].all()
        assert set(shape[ref].tolist()) == {"continuous", "intermittent"}
        in_region = whole_class & (data.region == data.region[m][0])
        assert np.array_equal(ref, in_region) or np.array_equal(ref, whole_class)
    # with every customer continuous, the groups are the class-and-region ones of before
    plain = customer.peer_groups(data, data.customers)
    for m, _ in plain:
        local = data.customers & (klass == klass[m][0]) & (data.region == data.region[m][0])
        assert np.array_equal(m, local)


def test_step_drop_remembers_a_meters_level_from_before_the_window() -> None:
    """Three meters with a daily shape over 40 days, the window the last 14: one steady, one
    stepping down to 30 % on day 10 (in the history before the window, still there), one on
    day 33 (inside the window). The step shows for both thieves, near log(1 / 0.3); the
    steady meter shows none; a step on day 10 is not seen from a window without history."""
    days, per_day = 40, 48
    t = np.arange(days * per_day)
    shape = 1.0 + np.sin(2 * np.pi * (t % per_day) / per_day) ** 2
    kwh = np.column_stack(
        [
            shape,
            shape * np.where(t >= 10 * per_day, 0.3, 1.0),
            shape * np.where(t >= 33 * per_day, 0.3, 1.0),
        ]
    )
    m = kwh.shape[1]
    ids = np.repeat(np.array(["a", "b", "c"]), t.size)
    ts = np.tile((t + 1) * 1800 + 1_700_006_400, m)
    data = from_rows(
        ids,
        ts,
        kwh.T.ravel(),
        np.full(ids.size, np.nan),
        np.ones(ids.size, np.bool_),
        np.zeros(ids.size, np.uint16),
        1800,
        FLAG_BIT,
    )
    at = customer.FEATURE_NAMES.index("step_drop")
    start = (days - 14) * per_day
    step = customer.customer_features(data, np.zeros(kwh.shape), start).values[:, at]
    assert step[0] == pytest.approx(0.0, abs=1e-6)
    assert step[1] == pytest.approx(np.log(1 / 0.3), abs=0.05)
    assert step[2] == pytest.approx(np.log(1 / 0.3), abs=0.05)
    short = from_rows(
        ids.reshape(m, -1)[:, 10 * per_day :].ravel(),
        ts.reshape(m, -1)[:, 10 * per_day :].ravel(),
        kwh.T[:, 10 * per_day :].ravel(),
        np.full(m * (days - 10) * per_day, np.nan),
        np.ones(m * (days - 10) * per_day, np.bool_),
        np.zeros(m * (days - 10) * per_day, np.uint16),
        1800,
        FLAG_BIT,
    )
    late = customer.customer_features(short, np.zeros((short.n_intervals, m)), 16 * per_day)
    assert late.values[1, at] == pytest.approx(0.0, abs=1e-6)  # its step is before all data


@pytest.mark.parametrize(
    ("model", "rule", "beaten"),
    [
        (0.90, 0.85, True),  # by the margin
        (0.87, 0.86, False),  # by less, far from the ceiling
        (0.80, 0.90, False),
        (1.00, 0.985, True),  # the model detects all: less than the margin was left
        (0.995, 0.995, True),  # both at the ceiling
        (0.99, 1.00, False),  # at the ceiling, but below the rule
        (0.985, 0.97, False),  # under the ceiling
    ],
)
def test_the_model_beats_the_obvious_rule_by_the_margin_or_at_the_ceiling(
    model: float, rule: float, beaten: bool
) -> None:
    from ml.evaluate import TARGETS, beats_rule

    assert beats_rule(model, rule, TARGETS["margin_over_obvious_rule"]) is beaten


def test_the_combined_rank_averages_the_classifiers_and_the_peer_scores_ranks() -> None:
    data = from_fleet(FleetConfig(meters=120, days=10, seed=9, theft_share=0.2))
    feats = customer.customer_features(data, np.zeros(data.kwh.shape), data.window_start(7))
    theft = np.zeros(feats.meter_index.size, dtype=bool)
    theft[::5] = True
    scorer = customer.CustomerScorer(max_iter=20).fit(feats, theft)
    n = feats.meter_index.size

    def ranks(v: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return np.argsort(np.argsort(v, kind="stable"), kind="stable") + 1.0

    tied = np.array([3.0, 1.0, np.nan, 1.0, 2.0])
    assert customer._fractional_rank(tied).tolist() == [1.0, 0.5, 0.2, 0.5, 0.8]
    c, p = scorer.score(feats), customer.peer_score(feats)
    got = customer.combined_rank(c, p)
    assert got.shape == (n,) and ((got > 0) & (got <= 1)).all()
    if np.unique(c).size == n and np.unique(p).size == n:
        assert np.allclose(got, (ranks(c) + ranks(p)) / (2 * n))
    # Scales do not matter, only order: the classifier's P(theft) squashed changes nothing.
    assert np.array_equal(customer.combined_rank(c**3 / 10, p), got)
    # The customer the peer score puts first is in the top half whatever the classifier says.
    top = int(np.argmax(p))
    assert got[top] > 0.5
    # Ties share their mean rank: a classifier that cannot tell anyone apart leaves the order
    # to the peer score.
    even = customer.combined_rank(np.zeros(n), p)
    assert np.array_equal(np.argsort(even, kind="stable"), np.argsort(p, kind="stable"))
