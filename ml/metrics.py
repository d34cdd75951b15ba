"""Detection metrics: ROC-AUC, PR-AUC, MAP@k, detection rate at a false-positive rate, and
per-customer aggregation of reading scores. Scores: higher = more suspicious."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt
from sklearn.metrics import average_precision_score, roc_auc_score


def roc_auc(labels: npt.ArrayLike, scores: npt.ArrayLike) -> float | None:
    """Area under the ROC curve (ties count half); None without both classes."""
    y = np.asarray(labels, dtype=np.bool_)
    if y.all() or not y.any():
        return None
    return float(roc_auc_score(y, np.asarray(scores, dtype=np.float64)))


def pr_auc(labels: npt.ArrayLike, scores: npt.ArrayLike) -> float | None:
    """Area under the precision-recall curve as average precision; None without positives."""
    y = np.asarray(labels, dtype=np.bool_)
    if not y.any():
        return None
    return float(average_precision_score(y, np.asarray(scores, dtype=np.float64)))


def rank_order(scores: npt.ArrayLike) -> npt.NDArray[np.intp]:
    """Indices from the highest score down; ties keep input order (deterministic)."""
    s = np.asarray(scores, dtype=np.float64)
    order: npt.NDArray[np.intp] = np.argsort(-s, kind="stable")
    return order


def average_precision_at_k(labels: npt.ArrayLike, scores: npt.ArrayLike, k: int) -> float:
    """AP@k of the ranking by ``scores``: the mean, over the positives found in the top ``k``,
    of the precision at their rank, divided by ``min(k, number of positives)`` instead of by
    the positives found (so a list that finds few thieves is not rewarded for it).

    This is the "MAP@k" of an inspection list: 1.0 when the top ``min(k, positives)`` are all
    positives; 0 when there are no positives."""
    if k < 1:
        raise ValueError("k must be >= 1")
    y = np.asarray(labels, dtype=np.bool_)
    n_pos = int(y.sum())
    if n_pos == 0:
        return 0.0
    hits = y[rank_order(scores)[:k]]
    precision = np.cumsum(hits) / np.arange(1, hits.size + 1)
    return float((precision * hits).sum() / min(k, n_pos))


map_at_k = average_precision_at_k


def threshold_at_fpr(negative_scores: npt.ArrayLike, fpr: float) -> float:
    """The smallest cut ``t`` with ``mean(negative_scores > t) <= fpr`` (a score flags when it
    is strictly above ``t``)."""
    if not 0.0 <= fpr < 1.0:
        raise ValueError("fpr must be in [0, 1)")
    neg = np.asarray(negative_scores, dtype=np.float64).ravel()
    if neg.size == 0:
        raise ValueError("no negative scores")
    k = min(int(np.floor(fpr * neg.size + 1e-9)), neg.size - 1)
    # The (k+1)-th largest score, without sorting everything.
    return float(-np.partition(-neg, k)[k])


def detection_rate_at_fpr(
    scores: npt.ArrayLike,
    negative: npt.ArrayLike,
    groups: npt.ArrayLike,
    fpr: float,
    *,
    names: Sequence[str] | None = None,
) -> dict[str, float]:
    """Per group (e.g. attack type), the share of its items scored above the cut that flags at
    most ``fpr`` of the ``negative`` items. Items whose group is ``""`` (or not in ``names``)
    are not reported. Returns ``{group: rate}``."""
    s = np.asarray(scores, dtype=np.float64)
    neg = np.asarray(negative, dtype=np.bool_)
    g = np.asarray(groups).astype(str)
    cut = threshold_at_fpr(s[neg], fpr)
    wanted = sorted(set(g.tolist()) - {""}) if names is None else list(names)
    out: dict[str, float] = {}
    for name in wanted:
        sel = g == name
        if sel.any():
            out[name] = float((s[sel] > cut).mean())
    return out


def rates_by_code(
    flagged: npt.ArrayLike, codes: npt.ArrayLike, names: Sequence[str]
) -> dict[str, float]:
    """Share of flagged items per integer code (``names[code]``), for codes > 0 present."""
    f = np.asarray(flagged, dtype=np.bool_)
    c = np.asarray(codes, dtype=np.int64)
    total = np.bincount(c, minlength=len(names))
    hit = np.bincount(c[f], minlength=len(names))
    return {names[i]: float(hit[i] / total[i]) for i in range(1, len(names)) if total[i]}


def flag_rate(scores: npt.ArrayLike, threshold: float) -> float | None:
    """Share of ``scores`` strictly above ``threshold``; None when empty."""
    s = np.asarray(scores, dtype=np.float64)
    return float((s > threshold).mean()) if s.size else None


def aggregate_per_customer(
    scores: npt.ArrayLike,
    mask: npt.ArrayLike,
    how: str = "mean",
    *,
    threshold: float | npt.ArrayLike = 0.0,
    q: float = 0.95,
) -> npt.NDArray[np.float64]:
    """One score per customer from ``(T, M)`` reading scores, over the readings in ``mask``
    (``(T, M)`` bool). ``how``: ``mean``, ``quantile`` (``q``), ``max``, or ``frac`` (share of
    the masked readings above ``threshold``, a scalar or one per customer). A customer with no
    masked reading gets NaN."""
    s = np.asarray(scores, dtype=np.float64)
    m = np.asarray(mask, dtype=np.bool_)
    if s.shape != m.shape or s.ndim != 2:
        raise ValueError("scores and mask must both be (T, M)")
    count = m.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        if how == "mean":
            out = np.where(m, s, 0.0).sum(axis=0) / count
        elif how == "frac":
            t = np.broadcast_to(np.asarray(threshold, dtype=np.float64), (s.shape[1],))
            out = (m & (s > t[None, :])).sum(axis=0) / count
        elif how == "max":
            out = np.where(m, s, -np.inf).max(axis=0)
        elif how == "quantile":
            out = np.full(s.shape[1], np.nan)
            some = count > 0
            if some.any():
                out[some] = np.nanquantile(np.where(m, s, np.nan)[:, some], q, axis=0)
        else:
            raise ValueError(f"unknown aggregation {how!r}")
    result: npt.NDArray[np.float64] = np.where(count > 0, out, np.nan)
    return result


def customer_labels(
    label_code: npt.ArrayLike, theft_codes: npt.ArrayLike, names: Sequence[str]
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.str_]]:
    """From ``(T, M)`` label codes: whether each customer stole in the window (any theft-coded
    reading) and its label name ("" when never labelled; a meter has one type)."""
    codes = np.asarray(label_code)
    theft: npt.NDArray[np.bool_] = np.asarray(np.isin(codes, np.asarray(theft_codes)).any(axis=0))
    kind: npt.NDArray[np.str_] = np.asarray(names, dtype=object)[codes.max(axis=0)].astype(str)
    return theft, kind


def round_floats(obj: object, digits: int = 4) -> object:
    """A copy of nested dicts/lists with floats rounded (for reports), NaN/inf as None."""
    if isinstance(obj, float | np.floating):
        value = float(obj)
        return round(value, digits) if np.isfinite(value) else None
    if isinstance(obj, Mapping):
        return {k: round_floats(v, digits) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [round_floats(v, digits) for v in obj]
    return obj
