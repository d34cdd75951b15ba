"""Per-reading anomaly features from a meter's own recent history (numpy only).

One implementation serves the gateway agent (score the readings that just arrived) and training
(``ml``), so the edge scores exactly what the model was trained on.

Input: the readings of ONE meter sorted by ``ts`` (history first, then the readings to score), or
many meters at once with :func:`compute_features_grouped`. Every row gets a feature vector that
uses only rows at or before it (causal), and only rows inside :func:`history_window_s` before it
plus the meter's long memory (:mod:`edge_agent.long_memory`, a profile folded day by day over
months): given that profile as it stood before them, more history never changes a row's features.

Time is cut into slots of ``interval_s`` on the absolute epoch grid (``ts`` rounded to the nearest
multiple of ``interval_s``); missing slots are gaps. Time of day and calendar days are the meter's
local ones (``utc_offset_s``, see :mod:`edge_agent.localtime`); "the same hour on earlier days" is
whole days of slots back, so for a week after a daylight-saving change it is an hour off.

A row is *valid* when the supply was on and the meter was not out of credit (``no_credit`` flag).
Only valid rows feed the trailing means, and rows that are not valid get neutral values (0) for the
ratio features and the zero run, and keep their meter's latest ``rough_24h`` and ``flatness_24h``
(up to 6 days old), so an outage or an empty prepaid meter does not look like theft; so does a
valid row right after one, with too few valid readings in its last 24 h. Register and tamper-flag
features are computed on every row: a cover opened during an outage is still a tamper event.

Energies are summed as integers (micro-kWh), so the result is bit-for-bit the same whether a
meter is computed alone or inside a large grouped call.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np
import numpy.typing as npt

from edge_agent.feature_spec import (
    _LOOKBACK_DAYS,
    _check_interval,
    _history_slots,
    _same_hour_half_width,
)
from edge_agent.feature_spec import DEFAULT_FLAG_BITS as DEFAULT_FLAG_BITS
from edge_agent.feature_spec import FEATURE_NAMES as FEATURE_NAMES
from edge_agent.feature_spec import NO_CREDIT_FLAG as NO_CREDIT_FLAG
from edge_agent.feature_spec import TAMPER_FLAGS as TAMPER_FLAGS
from edge_agent.feature_spec import flag_bits_from_names as flag_bits_from_names
from edge_agent.feature_spec import history_window_s as history_window_s
from edge_agent.feature_spec import slots_per_day as slots_per_day
from edge_agent.feature_spec import supplied as supplied
from edge_agent.long_memory import QUANTUM_PER_KWH, Usual, fold

#: Smallest energy level taken as a meter's normal use (kW): keeps ratios sane for tiny loads.
#: Below the 8-20 W average draw of a lifeline customer, so their ratios are not squashed.
ENERGY_FLOOR_KW = 0.001
#: Fraction of a meter's 7-day mean added to numerator and denominator of consumption ratios.
RATIO_SMOOTHING = 0.1
_CLIP = 10.0
# Dense slots processed at once by the grouped variant: bounds the temporary memory (~700 bytes
# a slot) whatever the fleet size. Smaller chunks lower the agent's peak RSS under a backlog and
# cost feature throughput (2,048 against 4,096: about 1 MB less, ~18 % slower).
_CHUNK_SLOTS = 1 << 11
# Rows whose rough_24h median is computed at once (bounds the (rows, slots per day) matrix).
_MEDIAN_ROWS = 2048
# Previous local days seen by day_spread_6d and today_vs_best_6d (the oldest slot they reach,
# today's first slot - 6 days, stays inside the 7-day history window).
_SPREAD_DAYS = 6
# Fewest valid days (of the previous six) for day_spread_6d.
_MIN_DAY_BLOCKS = 3
# Squared energies are summed as two int64 limbs (exact); energies above this (micro-kWh,
# ~2,147 kWh per interval) are clipped for flatness_24h only, so no square overflows.
_SQUARE_CAP = (1 << 31) - 1

# Feature columns by name (FEATURE_NAMES is the one order); rough_24h and flatness_24h are
# carried together, as one slice.
_AT = {name: i for i, name in enumerate(FEATURE_NAMES)}
_CARRIED = slice(_AT["rough_24h"], _AT["flatness_24h"] + 1)
if _CARRIED.stop - _CARRIED.start != 2:
    raise RuntimeError("features: rough_24h and flatness_24h must be adjacent in FEATURE_NAMES")

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


def flags_mask(
    flags_per_row: Iterable[Iterable[str]], flag_bits: Mapping[str, int] = DEFAULT_FLAG_BITS
) -> npt.NDArray[np.uint16]:
    """Bitmask per row from flag names (``[("cover_open",), (), ...]``); unknown names are
    ignored."""
    masks: list[int] = []
    for row in flags_per_row:
        mask = 0
        for name in row:
            mask |= int(flag_bits.get(name, 0))
        masks.append(mask)
    return np.asarray(masks, dtype=np.uint16)


def _mask_of(flag_bits: Mapping[str, int], names: Iterable[str]) -> int:
    mask = 0
    for name in names:
        bit = int(flag_bits.get(name, 0))
        if bit < 0 or bit > 0xFFFF or (bit & (bit - 1)) != 0:
            raise ValueError(f"flag_bits[{name!r}] = {bit} is not a single-bit mask (1 << i)")
        mask |= bit
    return mask


def compute_features(
    ts: npt.ArrayLike,
    kwh: npt.ArrayLike,
    supply_on: npt.ArrayLike,
    flags: npt.ArrayLike,
    register_kwh: npt.ArrayLike,
    interval_s: int,
    flag_bits: Mapping[str, int],
    *,
    utc_offset_s: npt.ArrayLike = 0,
) -> npt.NDArray[np.float32]:
    """Features of one meter's readings, sorted by ``ts`` (epoch seconds, end of interval).

    ``flag_bits`` maps flag names to their bit masks in ``flags`` (``{"cover_open": 1, ...}``,
    see :func:`flag_bits_from_names`); unknown names are simply absent. ``register_kwh`` uses NaN
    for "not reported". ``utc_offset_s`` is the meter's local clock: one offset, or one per row
    (:func:`edge_agent.localtime.utc_offsets`, which follows daylight saving time). Returns
    float32 of shape ``(n, len(FEATURE_NAMES))``, all finite.
    """
    n = np.asarray(ts).shape[0]
    return compute_features_grouped(
        np.zeros(n, dtype=np.int64),
        ts,
        kwh,
        supply_on,
        flags,
        register_kwh,
        interval_s,
        flag_bits,
        utc_offset_s=utc_offset_s,
    )


def compute_features_grouped(
    meter_index: npt.ArrayLike,
    ts: npt.ArrayLike,
    kwh: npt.ArrayLike,
    supply_on: npt.ArrayLike,
    flags: npt.ArrayLike,
    register_kwh: npt.ArrayLike,
    interval_s: int,
    flag_bits: Mapping[str, int],
    *,
    utc_offset_s: npt.ArrayLike = 0,
    only: npt.ArrayLike | None = None,
    usual: Usual | None = None,
) -> npt.NDArray[np.float32]:
    """:func:`compute_features` for many meters at once.

    Rows must be grouped by ``meter_index`` (each meter's rows contiguous) and sorted by ``ts``
    inside each meter. The result for a meter's rows is identical to calling
    :func:`compute_features` on that meter alone.

    ``only`` (increasing row positions) returns the features of those rows alone, in that
    order: the agent passes a week of history to score a few new rows, and has no use for the
    history's own features (68 bytes a row it does not keep).

    ``usual`` is the long memory of these rows (:func:`edge_agent.long_memory.fold` from the
    profiles the gateway kept); without it, each meter's long memory starts with its first row
    here (training, which passes every row).
    """
    _check_interval(interval_s)
    meter = np.asarray(meter_index)
    ts_a = np.asarray(ts, dtype=np.int64)
    kwh_a = np.asarray(kwh, dtype=np.float64)
    on_a = np.asarray(supply_on, dtype=np.bool_)
    flags_a = np.asarray(flags)  # made int64 a chunk at a time
    reg_a = np.asarray(register_kwh, dtype=np.float64)
    n = ts_a.shape[0]
    offset_a = np.asarray(utc_offset_s, dtype=np.int64)
    if offset_a.ndim == 0:
        offset_a = np.broadcast_to(offset_a, (n,))
    for name, arr in (
        ("meter_index", meter),
        ("kwh", kwh_a),
        ("supply_on", on_a),
        ("flags", flags_a),
        ("register_kwh", reg_a),
        ("utc_offset_s", offset_a),
    ):
        if arr.shape != (n,):
            raise ValueError(f"{name} has shape {arr.shape}, expected ({n},)")
    if only is None:
        wanted = np.arange(n, dtype=np.int64)
    else:
        wanted = np.asarray(only)
        if wanted.size and wanted.dtype.kind not in "iu":
            raise ValueError(f"only must be integer row positions, got {wanted.dtype}")
        wanted = wanted.astype(np.int64)
        if wanted.ndim != 1 or (wanted.size and (wanted[0] < 0 or wanted[-1] >= n)):
            raise ValueError(f"only must be row positions in [0, {n})")
        if np.any(np.diff(wanted) <= 0):
            raise ValueError("only must be strictly increasing")
    out = np.zeros((wanted.shape[0], len(FEATURE_NAMES)), dtype=np.float32)
    if n == 0:
        return out

    starts = np.flatnonzero(np.r_[True, meter[1:] != meter[:-1]])
    # Contiguous meters: no meter value starts two runs, and none is NaN (never equal to itself,
    # so every NaN row would start a run). Sorted and compared, not np.unique: that imports
    # numpy.ma, 1.3 MB or more of the gateway's memory.
    firsts = np.sort(meter[starts])
    if np.any(firsts[1:] == firsts[:-1]) or np.any(firsts != firsts):
        raise ValueError("rows of a meter must be contiguous (group rows by meter_index)")
    new_meter = np.zeros(n, dtype=np.bool_)
    new_meter[starts] = True
    if np.any((np.diff(ts_a) <= 0) & ~new_meter[1:]):
        raise ValueError("ts must be strictly increasing within each meter")
    if not wanted.size:
        return out

    tamper_mask = _mask_of(flag_bits, TAMPER_FLAGS)
    no_credit_mask = _mask_of(flag_bits, (NO_CREDIT_FLAG,))
    if usual is None:
        valid = supplied(on_a, flags_a, no_credit_mask)
        usual = fold(meter, ts_a, kwh_a, valid, offset_a, interval_s)
        del valid
    elif usual.level_kw.shape != (n,):
        raise ValueError(f"usual must hold one value a row ({n})")

    # Dense slot index per row, gaps longer than the history window collapsed (rows further
    # apart than the window never interact, so this changes nothing but memory).
    hist = _history_slots(interval_s)
    slot_abs = (ts_a + interval_s // 2) // interval_s
    step = np.diff(slot_abs, prepend=slot_abs[0])
    del slot_abs
    np.minimum(step, hist + 1, out=step)
    step[new_meter] = 1  # each meter block starts one slot after the previous block ends
    dense = np.cumsum(step, out=step)
    dense -= 1  # 0-based, strictly increasing across the whole call

    ends = np.r_[starts[1:], n]
    chunk_start = 0
    while chunk_start < len(starts):
        first_row = starts[chunk_start]
        base = dense[first_row]
        stop = chunk_start + 1
        # Extend the chunk with whole meters while it stays under the slot budget.
        limit = base + _CHUNK_SLOTS
        last_ok = int(np.searchsorted(dense[ends - 1], limit, side="left"))
        stop = max(stop, min(last_ok, len(starts)))
        last_row = ends[stop - 1]
        lo, hi = np.searchsorted(wanted, [first_row, last_row])
        chunk_start = stop
        if lo == hi:  # no row of these meters is asked for
            continue
        rows = slice(first_row, last_row)
        block = _block_features(
            dense[rows] - base,
            new_meter[rows],
            ts_a[rows],
            kwh_a[rows],
            on_a[rows],
            flags_a[rows].astype(np.int64),
            reg_a[rows],
            interval_s,
            tamper_mask,
            no_credit_mask,
            offset_a[rows],
            usual.level_kw[rows],
        )
        out[lo:hi] = block[wanted[lo:hi] - first_row]
    return out


def _log_ratio(num: FloatArray, den: FloatArray, eps: FloatArray) -> FloatArray:
    result: FloatArray = np.log((num + eps) / (den + eps))
    return result


def _rough(
    g: IntArray,
    block_start: IntArray,
    valid: BoolArray,
    vk: IntArray,
    vc: IntArray,
    day: int,
    min_pairs: int,
) -> FloatArray:
    """rough_24h of every row: median of |log(q_s / q_s-1)| over the slots s of the last 24 h
    (g - day < s <= g) where slots s - 1 and s of the row's meter each hold exactly one valid
    non-zero reading; 0 with fewer than ``min_pairs`` such pairs and on rows not ``valid``."""
    size = vk.shape[0]
    pair = np.zeros(size, dtype=np.bool_)
    single = (vc == 1) & (vk > 0)
    pair[1:] = single[1:] & single[:-1]
    # Slot s of the padded array is slot s - day + 1 of the block: row g's window is
    # padded[g : g + day], oldest first.
    padded = np.full(size + day - 1, np.inf)
    s = np.flatnonzero(pair)
    padded[s + day - 1] = np.abs(np.log(vk[s] / vk[s - 1]))
    cp = np.zeros(size + 1, dtype=np.int64)
    np.cumsum(pair, out=cp[1:])
    # A pair's first slot must be inside the row's meter: s >= block_start + 1.
    lo = np.minimum(np.maximum(g - day + 1, block_start + 1), g + 1)
    count = cp[g + 1] - cp[lo]
    result = np.zeros(g.shape[0], dtype=np.float64)
    todo = np.flatnonzero(valid & (count >= max(1, min_pairs)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, day)
    oldest_allowed = np.arange(day, dtype=np.int64) - (day - 1)  # slot offset from g
    for start in range(0, todo.shape[0], _MEDIAN_ROWS):
        rows = todo[start : start + _MEDIAN_ROWS]
        mat = windows[g[rows]]  # a copy: (rows, day)
        young = np.flatnonzero(g[rows] - block_start[rows] < day)  # window reaches before
        if young.shape[0]:  # the meter's first slot: drop pairs that start before it
            cut = oldest_allowed[None, :] < (block_start[rows[young]] + 1 - g[rows[young]])[:, None]
            mat[young] = np.where(cut, np.inf, mat[young])
        mat.sort(axis=1)
        k = count[rows]
        picked = np.arange(rows.shape[0])
        result[rows] = 0.5 * (mat[picked, (k - 1) // 2] + mat[picked, k // 2])
    return result


def _block_features(
    g: IntArray,
    new_meter: BoolArray,
    ts: IntArray,
    kwh: FloatArray,
    supply_on: BoolArray,
    flags: IntArray,
    register: FloatArray,
    interval_s: int,
    tamper_mask: int,
    no_credit_mask: int,
    utc_offset_s: IntArray,
    usual_level_kw: FloatArray,
) -> npt.NDArray[np.float32]:
    n = g.shape[0]
    day = slots_per_day(interval_s)
    half = _same_hour_half_width(interval_s)
    week = _LOOKBACK_DAYS * day
    interval_h = interval_s / 3600.0
    size = int(g[-1]) + 1
    rows = np.arange(n, dtype=np.int64)

    # First dense slot of each row's meter (windows never reach before it).
    meter_first_row = np.maximum.accumulate(np.where(new_meter, rows, 0))
    block_start = g[meter_first_row]

    finite = np.isfinite(kwh) & (kwh >= 0)
    q = np.where(finite, np.rint(np.where(finite, kwh, 0.0) * QUANTUM_PER_KWH), 0.0).astype(
        np.int64
    )
    valid = supplied(supply_on, flags, no_credit_mask) & finite
    tamper = (flags & tamper_mask) != 0 if tamper_mask else np.zeros(n, np.bool_)
    zero = valid & (q == 0)
    nonzero = valid & (q > 0)

    def dense_int(weights: IntArray) -> IntArray:
        return np.bincount(g, weights=weights, minlength=size).astype(np.int64)

    vk = dense_int(np.where(valid, q, 0))
    vc = dense_int(valid.astype(np.int64))

    def cumulative(values: IntArray) -> IntArray:
        c = np.zeros(values.shape[0] + 1, dtype=np.int64)
        np.cumsum(values, out=c[1:])
        return c

    cvk, cvc = cumulative(vk), cumulative(vc)

    def window(c: IntArray, back_lo: int, back_hi: int) -> IntArray:
        """Sum over dense slots [g - back_lo, g - back_hi), clipped to the meter's block."""
        lo = np.maximum(g - back_lo, block_start)
        hi = np.maximum(g - back_hi, block_start)
        result: IntArray = c[hi] - c[lo]
        return result

    s24, c24 = window(cvk, day, 0), window(cvc, day, 0)
    s7, c7 = window(cvk, week, 0), window(cvc, week, 0)

    ssh = np.zeros(n, dtype=np.int64)
    csh = np.zeros(n, dtype=np.int64)
    for back_days in range(1, _LOOKBACK_DAYS + 1):
        for offset in range(-half, half + 1):
            idx = g + offset - back_days * day
            inside = idx >= block_start
            idx = np.where(inside, idx, 0)
            ssh += np.where(inside, vk[idx], 0)
            csh += np.where(inside, vc[idx], 0)

    scale = float(QUANTUM_PER_KWH)
    floor = ENERGY_FLOOR_KW * interval_h

    def mean(s: IntArray, c: IntArray, min_count: int) -> tuple[FloatArray, BoolArray]:
        ok = c >= max(1, min_count)
        m: FloatArray = np.where(ok, s / np.maximum(c, 1) / scale, 0.0)
        return m, ok

    m24, ok24 = mean(s24, c24, day // 4)
    m7, ok7 = mean(s7, c7, day)
    msh, oksh = mean(ssh, csh, 2)
    level = np.where(ok7, np.maximum(m7, floor), floor)
    eps = np.where(ok7, np.maximum(RATIO_SMOOTHING * m7, floor), floor)
    x = q / scale

    out = np.zeros((n, len(FEATURE_NAMES)), dtype=np.float64)
    mid = (ts - interval_s / 2.0 + utc_offset_s) % 86400.0
    angle = 2.0 * math.pi * mid / 86400.0
    out[:, _AT["hour_sin"]] = np.sin(angle)
    out[:, _AT["hour_cos"]] = np.cos(angle)
    out[:, _AT["kwh_vs_same_hour_7d"]] = np.where(valid & oksh, _log_ratio(x, msh, eps), 0.0)
    out[:, _AT["kwh_vs_24h"]] = np.where(valid & ok24, _log_ratio(x, m24, eps), 0.0)
    out[:, _AT["kwh_vs_7d"]] = np.where(valid & ok7, _log_ratio(x, m7, eps), 0.0)
    # The long memory (months): the last 24 h against the meter's usual level, smoothed by a
    # tenth of that level. The level change needs half a day in the last 24 h: a mean of a few
    # hours (the first ones after a top-up) against whole days is a change of hours, not of level.
    usual = usual_level_kw * interval_h
    known = np.isfinite(usual)
    usual = np.where(known, usual, 0.0)
    eps_u = np.maximum(RATIO_SMOOTHING * usual, floor)
    out[:, _AT["mean_24h_vs_usual"]] = np.where(
        valid & known & (c24 >= day // 2), _log_ratio(m24, usual, eps_u), 0.0
    )
    del usual, known, eps_u
    # (Temporaries are dropped once used: a block's peak memory is the agent's.)
    del s24, c24, s7, c7, ssh, csh, m24, ok24, msh, oksh, m7, eps, x

    # Zero run: valid zero readings since the last valid non-zero one, within the last 7 days.
    # Outage / no-credit rows and missing slots neither count nor break the run.
    cz = cumulative(dense_int(zero.astype(np.int64)))
    last_nonzero = np.maximum.accumulate(np.where(nonzero | new_meter, rows, -1))
    reset_slot = np.where(nonzero[last_nonzero], g[last_nonzero] + 1, g[last_nonzero])
    lo = np.maximum(np.maximum(reset_slot, g - week + 1), block_start)
    run = cz[g + 1] - cz[lo]
    out[:, _AT["zero_run_log_h"]] = np.where(zero, np.log1p(run * interval_h), 0.0)
    del cz, last_nonzero, reset_slot, lo, run

    # Volatility, over valid readings of the last 24 h (slots g - day + 1 .. g, this one included)
    # or the last seven such 24-h blocks; 0 on invalid rows, and without enough samples (but see
    # the carry of rough_24h and flatness_24h below day_spread_6d).
    min_day = max(1, day // 4)
    r24 = window(cvc, day - 1, -1)
    out[:, _AT["rough_24h"]] = _rough(g, block_start, valid, vk, vc, day, min_day)

    # flatness_24h = std / mean: exact integer sums of q and q^2 (q^2 as two 32-bit limbs).
    qc = np.minimum(np.where(valid, q, 0), _SQUARE_CAP)
    sq = qc * qc
    s1 = window(cumulative(dense_int(qc)), day - 1, -1).astype(np.float64)
    s2_hi = window(cumulative(dense_int(sq >> 32)), day - 1, -1).astype(np.float64)
    s2_lo = window(cumulative(dense_int(sq & 0xFFFFFFFF)), day - 1, -1).astype(np.float64)
    cnt = np.maximum(r24, 1).astype(np.float64)
    var = np.maximum(cnt * (s2_hi * 4294967296.0 + s2_lo) - s1 * s1, 0.0) / (cnt * cnt)
    flat = np.sqrt(var) / np.maximum(s1 / cnt, floor * scale)
    enough = r24 >= min_day
    out[:, _AT["flatness_24h"]] = np.where(valid & enough, flat, 0.0)
    # A row not valid, or with too few valid readings in the last 24 h (after a zero-credit
    # period, an outage or missing readings; not a run of valid zeros), keeps its meter's latest
    # rough_24h and flatness_24h computed from enough readings, not 0, which would mean
    # "perfectly steady" (as it keeps the meter's level: a 0 made outages stand out). What that
    # row read (its 24 h and the slot before them: g - week at most) must lie inside this row's
    # history window, as the agent reads no more.
    last_ok = np.maximum.accumulate(np.where((valid & enough) | new_meter, rows, -1))
    carry = ~(valid & enough) & valid[last_ok] & enough[last_ok] & (g - g[last_ok] <= week - day)
    out[:, _CARRIED] = np.where(carry[:, None], out[last_ok, _CARRIED], out[:, _CARRIED])
    del qc, sq, s1, s2_hi, s2_lo, cnt, var, flat, enough, r24, last_ok, carry

    # Day-level features on local calendar days (UTC + utc_offset_s): a day-level change
    # (h1 scales a whole day by a fresh factor) is not smeared over two sliding 24-h blocks.
    # p = slots of this slot's local day before it (slot midpoints, integer arithmetic), read
    # from the local clock: on the day a zone changes its offset, the day's start is off by
    # that change (an hour) for the rest of that day.
    slot_abs = (ts + interval_s // 2) // interval_s
    two_day = 2 * 86400
    p = ((2 * slot_abs * interval_s - interval_s + 2 * utc_offset_s) % two_day) // (2 * interval_s)
    today = np.maximum(g - p, block_start)
    t_s, t_c = cvk[g + 1] - cvk[today], cvc[g + 1] - cvc[today]
    # day_spread_6d: std of log(mean + floor) of the six previous local days, each the `day`
    # slots before today's first slot (whole days at intervals dividing 24 h).
    logs: list[FloatArray] = []
    oks: list[BoolArray] = []
    hi = np.maximum(g - p, block_start)
    for k in range(1, _SPREAD_DAYS + 1):
        lo = np.maximum(g - p - k * day, block_start)
        bm, ok = mean(cvk[hi] - cvk[lo], cvc[hi] - cvc[lo], min_day)
        logs.append(np.log(bm + floor))
        oks.append(ok)
        hi = lo
    blocks = np.zeros(n, dtype=np.int64)
    mu = np.zeros(n, dtype=np.float64)
    for lg, ok in zip(logs, oks, strict=True):
        blocks += ok
        mu += np.where(ok, lg, 0.0)
    nb = np.maximum(blocks, 1)
    mu /= nb
    ssd = np.zeros(n, dtype=np.float64)
    for lg, ok in zip(logs, oks, strict=True):
        ssd += np.where(ok, np.square(lg - mu), 0.0)
    out[:, _AT["day_spread_6d"]] = np.where(
        valid & (blocks >= _MIN_DAY_BLOCKS), np.sqrt(ssd / nb), 0.0
    )
    # today_vs_best_6d: today so far (this slot included) against the best of the same slots
    # (same local times) on the previous six days, each with at least one valid reading.
    cur_m, cur_ok = mean(t_s, t_c, 1)
    best = np.full(n, -np.inf)
    for k in range(1, _SPREAD_DAYS + 1):
        lo = np.maximum(g - p - k * day, block_start)
        hi = np.maximum(g + 1 - k * day, block_start)
        bm, ok = mean(cvk[hi] - cvk[lo], cvc[hi] - cvc[lo], 1)
        best = np.where(ok, np.maximum(best, np.log(bm + floor)), best)
    has_best = np.isfinite(best)
    out[:, _AT["today_vs_best_6d"]] = np.where(
        valid & cur_ok & has_best,
        np.log(cur_m + floor) - np.where(has_best, best, 0.0),
        0.0,
    )
    del logs, oks, blocks, mu, nb, ssd, cur_m, cur_ok, best, has_best, t_s, t_c, today, hi, lo

    # Register: compare with the previous reported register of the same meter (within 7 days).
    known = np.isfinite(register)
    last_known = np.maximum.accumulate(np.where(known, rows, -1))
    prev = np.r_[-1, last_known[:-1]]
    has_prev = known & (prev >= meter_first_row) & (g - g[np.maximum(prev, 0)] <= week)
    p = np.where(has_prev, prev, 0)
    delta = np.where(has_prev, register - register[p], 0.0)
    cq = cumulative(q)
    energy = (cq[rows + 1] - cq[p + 1]) / scale
    contiguous = has_prev & ((g - g[p]) == (rows - p))
    mismatch = np.where(contiguous, delta - energy, 0.0)
    out[:, _AT["register_mismatch"]] = np.sign(mismatch) * np.log1p(np.abs(mismatch) / level)
    out[:, _AT["register_drop"]] = np.log1p(np.maximum(-delta, 0.0) / level)

    ct = cumulative(dense_int(tamper.astype(np.int64)))
    out[:, _AT["tamper_24h_log"]] = np.log1p(window(ct, day - 1, -1))

    # Absolute level, evening share and night level: what a meter that always stole cannot hide
    # from a per-class model (its own history looks normal to the ratios above).
    out[:, _AT["log_level_7d"]] = np.where(ok7, np.log(level / interval_h), 0.0)
    evening = (mid >= 17 * 3600.0) & (mid < 23 * 3600.0)
    s_all = window(cvk, week - 1, -1)
    s_eve = window(cumulative(dense_int(np.where(valid & evening, q, 0))), week - 1, -1)
    c_all = window(cvc, week - 1, -1)
    out[:, _AT["evening_share_7d"]] = np.where(
        (c_all >= day) & (s_all > 0), s_eve / np.maximum(s_all, 1), 0.0
    )
    # night_level_7d: mean power of the valid readings in 23-05 h local of the same 7 days (a
    # nightly bypass empties the night whatever the meter's own past); 0 without a day of samples
    # or without a valid night reading.
    night = (mid >= 23 * 3600.0) | (mid < 5 * 3600.0)
    s_night = window(cumulative(dense_int(np.where(valid & night, q, 0))), week - 1, -1)
    c_night = window(cumulative(dense_int((valid & night).astype(np.int64))), week - 1, -1)
    night_kw = np.maximum(s_night / np.maximum(c_night, 1) / scale, floor) / interval_h
    out[:, _AT["night_level_7d"]] = np.where((c_all >= day) & (c_night > 0), np.log(night_kw), 0.0)

    np.clip(out, -_CLIP, _CLIP, out=out)
    return out.astype(np.float32)
