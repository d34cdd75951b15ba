"""Customer-level theft scoring, central side: which customers to inspect.

The gateway scores single readings against the meter's own past (``edge_agent.features``), which
cannot see theft that was there from the first day of the history, nor a customer whose whole
pattern is odd for its kind. Central has every meter of the fleet over the whole window, so it
describes each customer over the evaluation window with a few numbers (:data:`FEATURE_NAMES`):

* **edge scores, aggregated** — mean and 95th percentile of the gateway model's margin
  (``score - threshold``) over the valid readings, share of readings above the threshold, worst
  day's mean margin;
* **the meter against itself over the window** — share of zero readings with supply and credit,
  day-to-day spread of the daily level (``log`` daily energy, corrected for the hours missing to
  outages), the lowest day against the median day, last week against first week, the largest
  sustained step down (over the window and up to four weeks before it: a long memory of the
  meter's own level), peak to mean;
* **the meter against its peers** (same customer class and region; the class alone when fewer
  than :data:`MIN_PEERS` share a region; a load shape that :data:`MIN_PEERS` customers of a
  class share counts as a class of its own: :func:`peer_groups`): correlation of its average
  daily profile with the peers' median profile, level against the peers' median level, and
  robust z-scores (median / MAD among peers) of its day-to-day spread, interval-to-interval
  roughness and profile flatness;
* **the grid** — share of its transformer's energy that no customer meter accounts for
  (transformer meter minus the sum of its customers), and the correlation between the meter's
  daily energy and that unaccounted energy (a thief who steals more on some days moves it);
* **meter events** — share of readings with a tamper flag, register decreases, and the register's
  advance over the window against the energy reported.

:class:`CustomerScorer` combines them with a gradient-boosted tree classifier
(``HistGradientBoostingClassifier``) trained on labelled customers (the simulator's injected
thefts, later confirmed inspections). It learns the attacks it is shown: its figures on the
simulator say nothing yet about theft patterns the simulator does not make (see
``docs/detection.md``). :func:`peer_score` is an unsupervised alternative (no labels: what
``python -m ml rank`` runs); :func:`combined_rank` ranks by the two together.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from sklearn.ensemble import HistGradientBoostingClassifier
from threadpoolctl import threadpool_limits

from edge_agent.features import TAMPER_FLAGS
from ml.dataset import TRANSFORMER, MeterData

FEATURE_NAMES: tuple[str, ...] = (
    "score_mean",
    "score_q95",
    "flag_share",
    "score_worst_day",
    "zero_share",
    "day_spread",
    "day_dip",
    "trend",
    "step_drop",
    "peak_to_mean",
    "profile_corr_peers",
    "level_vs_peers",
    "day_spread_z_peers",
    "roughness_z_peers",
    "flatness_z_peers",
    "tx_unaccounted_share",
    "tx_unaccounted_corr",
    "tamper_share",
    "register_drops",
    "register_vs_energy",
)
MIN_PEERS = 8
LEVEL_FLOOR_KWH_DAY = 0.01
#: Days before the window that ``step_drop`` also reads, when the data has them.
STEP_HISTORY_DAYS = 28
#: Fewest days on each side of a ``step_drop`` change point.
STEP_MIN_DAYS = 3

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


def _nanmean(a: FloatArray, axis: int) -> FloatArray:
    count = np.isfinite(a).sum(axis=axis)
    total = np.nansum(a, axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        result: FloatArray = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return result


def _masked_quantile(a: FloatArray, q: float, axis: int = 0) -> FloatArray:
    """``nanquantile`` without the all-NaN warning (NaN there)."""
    out = np.full(a.shape[1 - axis], np.nan)
    some = np.isfinite(a).any(axis=axis)
    if some.any():
        picked = a[:, some] if axis == 0 else a[some, :]
        out[some] = np.nanquantile(picked, q, axis=axis)
    return out


def _robust_z(values: FloatArray, reference: FloatArray | None = None) -> FloatArray:
    """``(values - median) / (1.4826 MAD)`` of ``reference`` (default: ``values``)."""
    ref = values if reference is None else reference
    finite = np.isfinite(ref)
    if not finite.any():
        return np.zeros_like(values)
    med = float(np.median(ref[finite]))
    mad = float(np.median(np.abs(ref[finite] - med))) * 1.4826
    scale = max(mad, 1e-6, 1e-3 * abs(med))
    result: FloatArray = (values - med) / scale
    return result


def peer_groups(data: MeterData, customers: BoolArray) -> list[tuple[BoolArray, BoolArray]]:
    """``(members, reference)`` masks that partition the customers: a customer is compared
    with the customers of its class and region when at least :data:`MIN_PEERS` share them,
    else with its whole class, else with every customer. A load shape that at least
    :data:`MIN_PEERS` customers of a class share is a class of its own (an intermittent home is
    far below its whole class by nature, not against its like): its customers are compared
    with those of the class, shape and region, else of the class and shape. Customers of a
    shape too rare in their class to be a group are compared as before, with their class."""
    out: list[tuple[BoolArray, BoolArray]] = []
    klass, shape, region = data.customer_class, data.load_shapes, data.region
    for c in np.unique(klass[customers]):
        in_class = customers & (klass == c)
        class_ref = in_class if in_class.sum() >= MIN_PEERS else customers
        rest = in_class.copy()
        for kind in np.unique(shape[in_class]):
            like = in_class & (shape == kind)
            if like.sum() < MIN_PEERS:
                continue
            rest &= ~like
            for r in np.unique(region[like]):
                members = like & (region == r)
                out.append((members, members if members.sum() >= MIN_PEERS else like))
        for r in np.unique(region[rest]):
            members = rest & (region == r)
            local = in_class & (region == r)
            out.append((members, local if local.sum() >= MIN_PEERS else class_ref))
    return out


@dataclass
class CustomerFeatures:
    meter_index: npt.NDArray[np.int64]  # columns of the MeterData these rows describe
    values: FloatArray  # (customers, len(FEATURE_NAMES)), finite
    names: tuple[str, ...] = FEATURE_NAMES

    def rows(self, keep: BoolArray) -> CustomerFeatures:
        """The customers where ``keep`` is True."""
        return CustomerFeatures(self.meter_index[keep], self.values[keep], self.names)


def customer_features(
    data: MeterData,
    margin: FloatArray,
    start: int,
    *,
    customers: BoolArray | None = None,
) -> CustomerFeatures:
    """Features of the customer meters over intervals ``start:`` (the window).

    ``margin`` is the gateway model's ``score - threshold`` per reading, ``(T, M)``. Peers are
    the customers of ``data`` (pass the whole fleet, not a sample)."""
    cust = data.customers if customers is None else customers
    ipd = data.intervals_per_day
    n_days = (data.n_intervals - start) // ipd
    if n_days < 2:
        raise ValueError("the window needs at least two whole days")
    end = start + n_days * ipd
    w = slice(start, end)
    kwh = data.kwh[w]
    present = data.present[w]
    valid = data.valid[w]
    m_n = data.n_meters
    x = np.where(valid, kwh, np.nan)
    xd = x.reshape(n_days, ipd, m_n)

    # Average daily profile (per slot of the UTC day) and level.
    profile = _nanmean(xd, 0)  # (ipd, M)
    slot_fill = np.nanmean(np.where(np.isfinite(profile), profile, np.nan), axis=0)
    profile = np.where(np.isfinite(profile), profile, np.nan_to_num(slot_fill)[None, :])
    level = profile.sum(axis=0)  # kWh per day
    shape = profile / np.maximum(level, 1e-12)
    # Daily level corrected for slots lost to outages / no credit.
    covered = np.where(valid.reshape(n_days, ipd, m_n), shape[None], 0.0).sum(axis=1)
    energy = np.nansum(xd, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        daily = np.where(covered >= 0.3, energy / np.maximum(covered, 1e-9), np.nan)
    floor = np.maximum(level, LEVEL_FLOOR_KWH_DAY) * 1e-2
    log_daily = np.log(np.maximum(daily, floor[None, :]))
    log_daily = np.where(np.isfinite(daily), log_daily, np.nan)
    med_day = _masked_quantile(log_daily, 0.5)
    day_spread = np.sqrt(_nanmean((log_daily - _nanmean(log_daily, 0)) ** 2, 0))
    day_dip = np.nanmin(np.where(np.isfinite(log_daily), log_daily, np.inf), axis=0) - med_day
    week = min(7, n_days // 2)
    trend = _nanmean(log_daily[-week:], 0) - _nanmean(log_daily[:week], 0)
    step_down = _step_drop(data, start, end, shape, floor)

    n_valid = valid.sum(axis=0)
    zero_share = ((x == 0) & valid).sum(axis=0) / np.maximum(n_valid, 1)
    mean_x = _nanmean(x, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        peak = _masked_quantile(x, 0.99) / np.maximum(mean_x, 1e-9)
    a, b = x[1:], x[:-1]
    both = (a > 0) & (b > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        step = np.where(
            both, np.abs(np.log(np.where(both, a, 1.0) / np.where(both, b, 1.0))), np.nan
        )
    roughness = _masked_quantile(step, 0.5)
    flatness = shape.std(axis=0) * ipd

    # Edge score aggregates.
    mg = np.where(valid, margin[w], np.nan)
    score_mean = _nanmean(mg, 0)
    score_q95 = _masked_quantile(mg, 0.95)
    flag_share = ((margin[w] > 0) & present).sum(axis=0) / np.maximum(present.sum(axis=0), 1)
    day_mean = _nanmean(mg.reshape(n_days, ipd, m_n), 1)
    score_worst = np.nanmax(np.where(np.isfinite(day_mean), day_mean, -np.inf), axis=0)

    # Peers.
    corr = np.zeros(m_n)
    level_rel = np.zeros(m_n)
    spread_z = np.zeros(m_n)
    rough_z = np.zeros(m_n)
    flat_z = np.zeros(m_n)
    log_level = np.log(np.maximum(level, LEVEL_FLOOR_KWH_DAY))
    for members, ref in peer_groups(data, cust):
        peer = np.median(shape[:, ref], axis=1)
        pc = shape[:, members] - shape[:, members].mean(axis=0)
        pp = peer - peer.mean()
        denom = np.sqrt((pc**2).sum(axis=0) * (pp**2).sum()) + 1e-30
        corr[members] = (pc * pp[:, None]).sum(axis=0) / denom
        level_rel[members] = log_level[members] - np.median(log_level[ref])
        spread_z[members] = _robust_z(day_spread[members], day_spread[ref])
        rough_z[members] = _robust_z(roughness[members], roughness[ref])
        flat_z[members] = _robust_z(flatness[members], flatness[ref])

    # Grid: energy of each transformer that its customers' meters do not account for.
    tx_share = np.zeros(m_n)
    tx_corr = np.zeros(m_n)
    tx_meter = data.role == TRANSFORMER
    for tx in np.unique(data.transformer_id[cust & (data.transformer_id != "")]):
        supply_cols = np.flatnonzero(tx_meter & (data.transformer_id == tx))
        on_tx = np.flatnonzero(cust & (data.transformer_id == tx))
        if supply_cols.size != 1:
            continue
        supplied = np.where(present[:, supply_cols[0]], kwh[:, supply_cols[0]], np.nan)
        billed = np.where(present[:, on_tx], kwh[:, on_tx], 0.0).sum(axis=1)
        resid = supplied - billed
        total = np.nansum(supplied)
        tx_share[on_tx] = np.nansum(resid) / total if total > 0 else 0.0
        resid_day = _nanmean(resid.reshape(n_days, ipd), 1)
        own_day = energy[:, on_tx]
        ok = np.isfinite(resid_day)
        if ok.sum() >= 3:
            r = resid_day[ok] - resid_day[ok].mean()
            o = own_day[ok] - own_day[ok].mean(axis=0)
            den = np.sqrt((r**2).sum() * (o**2).sum(axis=0)) + 1e-30
            tx_corr[on_tx] = (o * r[:, None]).sum(axis=0) / den

    # Meter events.
    tamper_mask = 0
    for name in TAMPER_FLAGS:
        tamper_mask |= int(data.flag_bits.get(name, 0))
    tamper_share = ((data.flags[w] & tamper_mask) != 0).sum(axis=0) / np.maximum(
        present.sum(axis=0), 1
    )
    reg = np.where(present, data.register_kwh[w], np.nan)
    reg_known = np.isfinite(reg)
    # Decreases between consecutive reported registers.
    last = np.where(reg_known, reg, np.nan)
    filled = _ffill(last)
    drops = ((np.diff(filled, axis=0) < -1e-6) & reg_known[1:]).sum(axis=0)
    first_reg = _first_finite(reg)
    last_reg = _first_finite(reg[::-1])
    energy_total = np.where(present, kwh, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        reg_vs = (last_reg - first_reg - energy_total) / np.maximum(
            energy_total, LEVEL_FLOOR_KWH_DAY * n_days
        )

    columns = {
        "score_mean": score_mean,
        "score_q95": score_q95,
        "flag_share": flag_share,
        "score_worst_day": score_worst,
        "zero_share": zero_share,
        "day_spread": day_spread,
        "day_dip": day_dip,
        "trend": trend,
        "step_drop": step_down,
        "peak_to_mean": peak,
        "profile_corr_peers": corr,
        "level_vs_peers": level_rel,
        "day_spread_z_peers": spread_z,
        "roughness_z_peers": rough_z,
        "flatness_z_peers": flat_z,
        "tx_unaccounted_share": tx_share,
        "tx_unaccounted_corr": tx_corr,
        "tamper_share": tamper_share,
        "register_drops": drops.astype(np.float64),
        "register_vs_energy": reg_vs,
    }
    idx = np.flatnonzero(cust)
    values = np.column_stack([np.asarray(columns[n], dtype=np.float64)[idx] for n in FEATURE_NAMES])
    values = np.nan_to_num(values, nan=0.0, posinf=1e3, neginf=-1e3)
    np.clip(values, -1e3, 1e3, out=values)
    return CustomerFeatures(meter_index=idx, values=values)


def _step_drop(
    data: MeterData, start: int, end: int, shape: FloatArray, floor: FloatArray
) -> FloatArray:
    """The largest sustained drop of a meter's daily level: over the window and up to
    ``STEP_HISTORY_DAYS`` whole days before it, the largest ``mean(log level before day k) -
    mean(log level from day k on)`` with at least ``STEP_MIN_DAYS`` valid days on each side.
    A theft that starts one day and stays (h1 with one factor) is a step: the meter's own
    longer past keeps it visible, where a 7-day window makes it the new normal."""
    ipd = data.intervals_per_day
    lo = start - min(start // ipd, STEP_HISTORY_DAYS) * ipd
    days = (end - lo) // ipd
    valid = data.valid[lo:end].reshape(days, ipd, -1)
    x = np.where(valid, data.kwh[lo:end].reshape(days, ipd, -1), 0.0)
    covered = np.where(valid, shape[None], 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        daily = np.where(covered >= 0.3, x.sum(axis=1) / np.maximum(covered, 1e-9), np.nan)
    ok = np.isfinite(daily)
    logs = np.where(ok, np.log(np.maximum(np.nan_to_num(daily), floor[None, :])), 0.0)
    # Sums and counts of the days before each split point k (k days: 0..days).
    s = np.vstack([np.zeros((1, logs.shape[1])), np.cumsum(logs, axis=0)])
    c = np.vstack([np.zeros((1, ok.shape[1])), np.cumsum(ok, axis=0)])
    before_n, after_n = c, c[-1][None, :] - c
    with np.errstate(invalid="ignore", divide="ignore"):
        drop = s / before_n - (s[-1][None, :] - s) / after_n
    drop = np.where((before_n >= STEP_MIN_DAYS) & (after_n >= STEP_MIN_DAYS), drop, -np.inf)
    best = drop.max(axis=0)
    result: FloatArray = np.where(np.isfinite(best), best, 0.0)
    return result


def _ffill(a: FloatArray) -> FloatArray:
    """Forward-fill NaN along axis 0."""
    t = np.arange(a.shape[0])[:, None]
    idx = np.where(np.isfinite(a), t, 0)
    np.maximum.accumulate(idx, axis=0, out=idx)
    result: FloatArray = np.take_along_axis(a, idx, axis=0)
    return result


def _first_finite(a: FloatArray) -> FloatArray:
    ok = np.isfinite(a)
    first = ok.argmax(axis=0)
    result: FloatArray = np.where(ok.any(axis=0), a[first, np.arange(a.shape[1])], np.nan)
    return result


#: Features and the direction in which they are suspicious, for the unsupervised peer score.
PEER_SIGNS: dict[str, float] = {
    "score_mean": 1.0,
    "zero_share": 1.0,
    "day_spread_z_peers": 1.0,
    "roughness_z_peers": 1.0,
    "flatness_z_peers": -1.0,
    "profile_corr_peers": -1.0,
    "level_vs_peers": -1.0,
    "tx_unaccounted_share": 1.0,
    "tamper_share": 1.0,
    "register_drops": 1.0,
    "step_drop": 1.0,  # the meter against its own longer past: a theft that stays
}


def peer_contributions(features: CustomerFeatures) -> FloatArray:
    """``(customers, len(PEER_SIGNS))``: each :data:`PEER_SIGNS` feature's robust z-score over
    all customers, signed so that higher = more suspicious, kept where positive (capped at 20)."""
    cols = [
        np.clip(_robust_z(sign * features.values[:, features.names.index(name)]), 0.0, 20.0)
        for name, sign in PEER_SIGNS.items()
    ]
    if not cols:
        return np.zeros((features.values.shape[0], 0))
    return np.stack(cols, axis=1)


def peer_score(features: CustomerFeatures) -> FloatArray:
    """Unsupervised customer score: the sum of :func:`peer_contributions`."""
    total: FloatArray = peer_contributions(features).sum(axis=1)
    return total


def _fractional_rank(values: FloatArray) -> FloatArray:
    """Each value's rank among ``values`` divided by their number, in (0, 1]; ties share
    their mean rank; NaN ranks lowest."""
    values = np.where(np.isnan(values), -np.inf, values)
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    first = np.r_[True, ordered[1:] != ordered[:-1]]  # where each run of equal values starts
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], values.size]
    mean_rank = (starts + 1 + ends) / 2  # 1-based ranks start+1 .. end
    ranks = np.empty(values.size)
    ranks[order] = mean_rank[np.cumsum(first) - 1]
    result: FloatArray = ranks / max(values.size, 1)
    return result


def combined_rank(classifier: FloatArray, peer: FloatArray) -> FloatArray:
    """A customer score from the classifier's (:class:`CustomerScorer`) and :func:`peer_score`'s
    scores of the same customers: the mean of their fractional ranks among the customers ranked
    together. The classifier learns the attacks and load styles it was trained on; the peer
    score needs no labels and carries the gateway evidence, the long-memory step down and the
    transformer balance whatever the style, so a customer the classifier has not learned to see
    still rises when that evidence is strong. Ranks, not values: P(theft) and a sum of z-scores
    are on different scales. (Not the warehouse's ``mart_inspection_list.inspection_score``,
    a weighted sum of other evidence.)"""
    return (_fractional_rank(classifier) + _fractional_rank(peer)) / 2


@dataclass
class CustomerScorer:
    """Gradient-boosted trees over :data:`FEATURE_NAMES`; ``score`` = P(theft)."""

    max_iter: int = 300
    learning_rate: float = 0.05
    max_leaf_nodes: int = 15
    l2_regularization: float = 1.0
    random_state: int = 0
    model: HistGradientBoostingClassifier | None = field(default=None, repr=False)
    train_rows: int = 0
    train_positives: int = 0

    def fit(self, features: CustomerFeatures, theft: npt.ArrayLike) -> CustomerScorer:
        y = np.asarray(theft, dtype=np.bool_)
        if y.shape != (features.values.shape[0],):
            raise ValueError("one label per customer row")
        if y.all() or not y.any():
            raise ValueError("training needs thieves and honest customers")
        self.model = HistGradientBoostingClassifier(
            max_iter=self.max_iter,
            learning_rate=self.learning_rate,
            max_leaf_nodes=self.max_leaf_nodes,
            l2_regularization=self.l2_regularization,
            early_stopping=False,
            random_state=self.random_state,
        )
        # One OpenMP thread: on small data (a few thousand customers) thread start-up and
        # spinning cost more than they bring (several times slower on a 2-core machine).
        with threadpool_limits(limits=1, user_api="openmp"):
            self.model.fit(features.values, y)
        self.train_rows = int(y.size)
        self.train_positives = int(y.sum())
        return self

    def score(self, features: CustomerFeatures) -> FloatArray:
        if self.model is None:
            raise RuntimeError("fit the scorer first")
        with threadpool_limits(limits=1, user_api="openmp"):
            proba = self.model.predict_proba(features.values)
        result: FloatArray = proba[:, 1].astype(np.float64)
        return result
