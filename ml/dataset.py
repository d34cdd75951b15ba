"""Readings of many meters as dense ``(intervals, meters)`` arrays, from the simulator or from
PostgreSQL ``raw.readings``, and their edge features.

Central work (training, evaluation, customer-level scoring) wants every meter side by side on
one time grid; the gateway's feature code wants one meter's rows in time order. A
:class:`MeterData` holds the former and :func:`reading_features` produces the latter's output
for every present reading, through :func:`edge_agent.features.compute_features_grouped`, the
very code the gateway runs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.feature_spec import NO_CREDIT_FLAG, PROFILE_HOURS, MeterProfile
from edge_agent.features import (
    DEFAULT_FLAG_BITS,
    FEATURE_NAMES,
    compute_features_grouped,
    flags_mask,
    history_window_s,
    supplied,
)
from edge_agent.localtime import DEFAULT_ZONE, check_zone, zone_offsets
from edge_agent.long_memory import DECAY, QUANTUM_PER_KWH, TAU_DAYS, Usual, fold
from edge_agent.registry import CONTINUOUS

log = logging.getLogger(__name__)

CUSTOMER = "customer"
TRANSFORMER = "transformer"
#: Days of raw.readings before the feature history that fold into each meter's long memory:
#: three time constants (older days would weigh under 5 %), or as far back as retention left.
LONG_MEMORY_DAYS = int(3 * TAU_DAYS)


@dataclass
class MeterData:
    """Readings on a regular grid. Arrays named ``(T, M)`` have one row per interval (``ts``,
    epoch s, END of the interval) and one column per meter (``meter_ids``)."""

    meter_ids: npt.NDArray[np.str_]  # (M,)
    ts: npt.NDArray[np.int64]  # (T,)
    interval_s: int
    kwh: npt.NDArray[np.float64]  # (T, M), 0 where absent
    register_kwh: npt.NDArray[np.float64]  # (T, M), NaN = not reported
    supply_on: npt.NDArray[np.bool_]  # (T, M)
    flags: npt.NDArray[np.uint16]  # (T, M) bit masks per ``flag_bits``
    present: npt.NDArray[np.bool_]  # (T, M): a reading exists
    flag_bits: dict[str, int]
    role: npt.NDArray[np.str_]  # (M,) "customer" | "transformer"
    customer_class: npt.NDArray[np.str_]  # (M,) "" when unknown
    region: npt.NDArray[np.str_]  # (M,)
    transformer_id: npt.NDArray[np.str_]  # (M,) "" for off-grid meters
    timezone: npt.NDArray[np.str_]  # (M,) IANA zone of the meter's local clock
    label_code: npt.NDArray[np.uint8] | None = None  # (T, M) simulator ground truth
    label_names: tuple[str, ...] = ()
    source: dict[str, Any] = field(default_factory=dict)
    #: Each meter's long memory (``edge_agent.long_memory``) folded from readings older than
    #: ``ts``, by meter id; a meter without one starts its memory with its first reading here.
    profiles: dict[str, MeterProfile] = field(default_factory=dict)
    #: (M,) each meter's load shape (``edge_agent.vocabulary.LOAD_SHAPES``); None: every meter
    #: continuous. Set from installation data, or by ``ml.load_shape``.
    load_shape: npt.NDArray[np.str_] | None = None

    @property
    def n_intervals(self) -> int:
        return int(self.ts.shape[0])

    @property
    def n_meters(self) -> int:
        return int(self.meter_ids.shape[0])

    @property
    def intervals_per_day(self) -> int:
        return max(1, 86400 // self.interval_s)

    @property
    def customers(self) -> npt.NDArray[np.bool_]:
        result: npt.NDArray[np.bool_] = self.role == CUSTOMER
        return result

    @property
    def load_shapes(self) -> npt.NDArray[np.str_]:
        if self.load_shape is None:
            return np.full(self.n_meters, CONTINUOUS)
        return self.load_shape

    @property
    def valid(self) -> npt.NDArray[np.bool_]:
        """Readings the features treat as consumption evidence: present, supply on, credit
        left (:func:`edge_agent.features.supplied`, the features' own rule)."""
        no_credit = int(self.flag_bits.get("no_credit", 0))
        result: npt.NDArray[np.bool_] = self.present & supplied(
            self.supply_on, self.flags, no_credit
        )
        return result

    def window_start(self, warmup_days: float) -> int:
        """First interval index after ``warmup_days`` of history."""
        return min(self.n_intervals, int(round(warmup_days * self.intervals_per_day)))

    def select_meters(self, mask: npt.NDArray[np.bool_]) -> MeterData:
        """The same data for the meters where ``mask`` is True."""

        def cols(a: Any) -> Any:
            return None if a is None else a[:, mask]

        return MeterData(
            meter_ids=self.meter_ids[mask],
            ts=self.ts,
            interval_s=self.interval_s,
            kwh=cols(self.kwh),
            register_kwh=cols(self.register_kwh),
            supply_on=cols(self.supply_on),
            flags=cols(self.flags),
            present=cols(self.present),
            flag_bits=self.flag_bits,
            role=self.role[mask],
            customer_class=self.customer_class[mask],
            region=self.region[mask],
            transformer_id=self.transformer_id[mask],
            timezone=self.timezone[mask],
            label_code=cols(self.label_code),
            label_names=self.label_names,
            source=dict(self.source),
            profiles=dict(self.profiles),
            load_shape=None if self.load_shape is None else self.load_shape[mask],
        )

    def window_bounds(self, start: int) -> tuple[datetime, datetime]:
        """UTC start and end of the readings from interval ``start`` on."""
        first = int(self.ts[start]) - self.interval_s
        return (
            datetime.fromtimestamp(first, UTC),
            datetime.fromtimestamp(int(self.ts[-1]), UTC),
        )


def from_fleet(cfg: Any) -> MeterData:
    """Simulate ``cfg`` (a :class:`simulator.FleetConfig`) into a :class:`MeterData`, labels
    included."""
    from simulator import FLAG_BIT, LABEL_NAMES, Fleet

    fleet = Fleet(cfg)
    registry = {m["meter_id"]: m for m in fleet.registry().meters}
    t_total = fleet.total_intervals
    ipd = cfg.intervals_per_day
    ids: npt.NDArray[np.str_] | None = None
    ts = np.empty(t_total, np.int64)
    arrays: dict[str, np.ndarray] = {}
    pos = 0
    for chunk in fleet.chunks(chunk_intervals=ipd):
        if ids is None:
            m = fleet.meter_count()
            ids = np.asarray(chunk.meter_id[:m], dtype=str)
            for name, dtype in (
                ("kwh", np.float64),
                ("register_kwh", np.float64),
                ("supply_on", np.bool_),
                ("flags", np.uint16),
                ("label_code", np.uint8),
            ):
                arrays[name] = np.empty((t_total, m), dtype)
        m = len(ids)
        n_t = len(chunk) // m
        ts[pos : pos + n_t] = chunk.ts[::m]
        for name, target in arrays.items():
            target[pos : pos + n_t] = getattr(chunk, name).reshape(n_t, m)
        pos += n_t
    assert ids is not None and pos == t_total
    meta = [registry[str(m)] for m in ids]
    return MeterData(
        meter_ids=ids,
        ts=ts,
        interval_s=cfg.interval_s,
        kwh=arrays["kwh"],
        register_kwh=arrays["register_kwh"],
        supply_on=arrays["supply_on"],
        flags=arrays["flags"],
        present=np.ones((t_total, len(ids)), np.bool_),
        flag_bits=dict(FLAG_BIT),
        role=np.array([m["meter_role"] for m in meta], dtype=str),
        customer_class=np.array([m["customer_class"] or "" for m in meta], dtype=str),
        region=np.array([m["region"] or "" for m in meta], dtype=str),
        load_shape=np.array([m.get("load_shape") or CONTINUOUS for m in meta], dtype=str),
        transformer_id=np.array([m["transformer_id"] or "" for m in meta], dtype=str),
        timezone=np.array([m["timezone"] for m in meta], dtype=str),
        label_code=arrays["label_code"],
        label_names=tuple(LABEL_NAMES),
        source={
            "kind": "simulator",
            "meters": cfg.meters,
            "days": cfg.days,
            "seed": cfg.seed,
            "start": cfg.start,
            "interval_s": cfg.interval_s,
            "theft_share": cfg.theft_share,
            "fault_share": cfg.fault_share,
        },
    )


def concat(parts: Sequence[MeterData], prefixes: Sequence[str]) -> MeterData:
    """The meters of ``parts`` side by side (one time grid, the same flags and labels), each
    part's meter ids prefixed (``"bursty:"``) so ids of separately simulated fleets stay
    distinct."""
    if not parts or len(parts) != len(prefixes):
        raise ValueError("one prefix per part, at least one part")
    first = parts[0]
    for p in parts[1:]:
        if not (
            np.array_equal(p.ts, first.ts)
            and p.interval_s == first.interval_s
            and p.flag_bits == first.flag_bits
            and p.label_names == first.label_names
        ):
            raise ValueError("parts differ in time grid, flags or labels")
    labelled = all(p.label_code is not None for p in parts)

    def cols(name: str) -> Any:
        return np.concatenate([getattr(p, name) for p in parts], axis=1)

    def meters(name: str) -> Any:
        return np.concatenate([getattr(p, name) for p in parts])

    return MeterData(
        meter_ids=np.concatenate(
            [np.char.add(prefix, p.meter_ids) for p, prefix in zip(parts, prefixes, strict=True)]
        ),
        ts=first.ts,
        interval_s=first.interval_s,
        kwh=cols("kwh"),
        register_kwh=cols("register_kwh"),
        supply_on=cols("supply_on"),
        flags=cols("flags"),
        present=cols("present"),
        flag_bits=first.flag_bits,
        role=meters("role"),
        customer_class=meters("customer_class"),
        region=meters("region"),
        transformer_id=meters("transformer_id"),
        timezone=meters("timezone"),
        label_code=cols("label_code") if labelled else None,
        label_names=first.label_names,
        source={"kind": "concat", "parts": [p.source for p in parts]},
        profiles={
            prefix + m: profile
            for p, prefix in zip(parts, prefixes, strict=True)
            for m, profile in p.profiles.items()
        },
        load_shape=(
            None
            if all(p.load_shape is None for p in parts)
            else np.concatenate([p.load_shapes for p in parts])
        ),
    )


def from_rows(
    meter_id: npt.ArrayLike,
    ts: npt.ArrayLike,
    kwh: npt.ArrayLike,
    register_kwh: npt.ArrayLike,
    supply_on: npt.ArrayLike,
    flags: npt.ArrayLike,
    interval_s: int,
    flag_bits: Mapping[str, int],
    meters: Mapping[str, Mapping[str, Any]] | None = None,
    source: dict[str, Any] | None = None,
) -> MeterData:
    """Long rows (one per reading, any order) onto the grid of ``interval_s`` slots."""
    mid = np.asarray(meter_id, dtype=str)
    t = np.asarray(ts, dtype=np.int64)
    if mid.size == 0:
        raise ValueError("no readings")
    ids, col = np.unique(mid, return_inverse=True)
    slot = (t + interval_s // 2) // interval_s
    first = int(slot.min())
    row = slot - first
    n_t = int(row.max()) + 1
    grid_ts = (first + np.arange(n_t, dtype=np.int64)) * interval_s
    shape = (n_t, len(ids))
    kwh_g = np.zeros(shape)
    reg_g = np.full(shape, np.nan)
    on_g = np.ones(shape, np.bool_)
    flags_g = np.zeros(shape, np.uint16)
    present = np.zeros(shape, np.bool_)
    kwh_g[row, col] = np.asarray(kwh, dtype=np.float64)
    reg_g[row, col] = np.asarray(register_kwh, dtype=np.float64)
    on_g[row, col] = np.asarray(supply_on, dtype=np.bool_)
    flags_g[row, col] = np.asarray(flags, dtype=np.uint16)
    present[row, col] = True
    meters = meters or {}

    def attr(key: str, default: str = "") -> npt.NDArray[np.str_]:
        return np.array([(meters.get(str(m), {}).get(key) or default) for m in ids], dtype=str)

    return MeterData(
        meter_ids=ids.astype(str),
        ts=grid_ts,
        interval_s=int(interval_s),
        kwh=kwh_g,
        register_kwh=reg_g,
        supply_on=on_g,
        flags=flags_g,
        present=present,
        flag_bits=dict(flag_bits),
        role=attr("meter_role", CUSTOMER),
        customer_class=attr("customer_class"),
        region=attr("region"),
        transformer_id=attr("transformer_id"),
        timezone=attr("timezone", DEFAULT_ZONE),
        source=source or {"kind": "rows"},
        load_shape=attr("load_shape", CONTINUOUS),
    )


def from_postgres(
    dsn: str,
    start: datetime,
    end: datetime,
    *,
    interval_s: int = 1800,
    with_history: bool = True,
    long_memory_days: int = LONG_MEMORY_DAYS,
) -> MeterData:
    """Readings of ``raw.readings`` with ``start < ts <= end`` (plus the feature history window
    before ``start`` when ``with_history``), meters' class, load shape and place from
    ``raw.meters``.
    Only readings with the given ``interval_s`` are used. With the history, each meter's long
    memory is also folded from up to ``long_memory_days`` of older readings (in the database,
    :func:`long_memory_profiles`), so the features compare a meter with its months as its
    gateway does, not with the few weeks read here."""
    import psycopg

    lo = start.timestamp() - (history_window_s(interval_s) if with_history else 0)
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        rows = conn.execute(
            "select meter_id, extract(epoch from ts)::bigint, kwh, register_kwh,"
            " supply = 'on', flags from raw.readings"
            " where ts > to_timestamp(%s) and ts <= %s and interval_s = %s",
            (lo, end, interval_s),
        ).fetchall()
        gateway_zones = _gateway_zones(conn)
        meters = {
            r[0]: {
                "meter_role": r[1],
                "customer_class": r[2],
                "region": r[3],
                "transformer_id": r[4],
                "timezone": r[5] or gateway_zones.get(r[6]),
                "load_shape": r[7],
            }
            for r in conn.execute(
                "select meter_id, meter_role, customer_class, region, transformer_id, timezone,"
                " gateway_id, load_shape from raw.meters"
            )
        }
        if not rows:
            raise ValueError(f"no readings in raw.readings between {start} and {end}")
        unzoned = sorted({str(r[0]) for r in rows if not meters.get(r[0], {}).get("timezone")})
        if unzoned:
            # Neither the registry nor the meter's gateway names a zone: these meters' local-time
            # features use UTC, which the operator is told (register raw.meters.timezone).
            log.warning(
                "%d meters have no timezone in raw.meters nor from their gateway (%s...): their"
                " features use %s",
                len(unzoned),
                ", ".join(unzoned[:3]),
                DEFAULT_ZONE,
            )
        cols = list(zip(*rows, strict=True))
        register = np.array([np.nan if v is None else v for v in cols[3]], dtype=np.float64)
        data = from_rows(
            cols[0],
            cols[1],
            np.asarray(cols[2], dtype=np.float64),
            register,
            np.asarray(cols[4], dtype=np.bool_),
            flags_mask(cols[5], DEFAULT_FLAG_BITS),
            interval_s,
            DEFAULT_FLAG_BITS,
            meters,
            source={
                "kind": "postgres",
                "start": start.isoformat(),
                "end": end.isoformat(),
                "interval_s": interval_s,
                "meters_without_timezone": len(unzoned),
            },
        )
        # The long memory goes on from older readings, over this connection (the meters' zones
        # are known by now).
        if with_history and long_memory_days > 0:
            data.profiles = long_memory_profiles(conn, data, lo, long_memory_days)
            data.source["long_memory_days"] = long_memory_days
            data.source["meters_with_long_memory"] = len(data.profiles)
    return data


def long_memory_profiles(
    conn: Any, data: MeterData, before: float, days: int
) -> dict[str, MeterProfile]:
    """Each meter's long memory through the last local day (its own zone) that ends by the
    epoch second ``before``, folded in the database from its valid readings of the ``days``
    before: per local hour, the sums of their power and counts, each day weighted by
    ``DECAY ** (days before that last day)``, as ``edge_agent.long_memory.fold`` folds them day
    by day on a gateway (the same sums up to float rounding). Readings of the day that
    ``before`` falls in are left to the caller's rows: with ``before`` at a local midnight
    nothing is missed, otherwise that day's readings before it are (one day in the ~60 the
    memory weighs)."""
    rows = conn.execute(
        """
        with z (meter_id, zone) as (select * from unnest(%(ids)s::text[], %(zones)s::text[])),
        through as (
            select meter_id, zone,
                   (to_timestamp(%(before)s) at time zone zone)::date - date '1970-01-01' - 1
                       as day
            from z
        ),
        r as (
            select t.meter_id, t.day as through_day, r.kwh,
                   -- the midpoint on the clock of the interval's end, as local_day_and_hour
                   (r.ts at time zone t.zone) - make_interval(secs => r.interval_s / 2.0) as mid
            from raw.readings r join through t using (meter_id)
            where r.ts > to_timestamp(%(before)s) - make_interval(days => %(days)s)
              and r.ts <= to_timestamp(%(before)s)
              and r.interval_s = %(interval_s)s
              and r.supply = 'on' and not (%(no_credit)s = any(r.flags))
              and r.kwh < 'infinity'
        ),
        d as (
            select meter_id, through_day, kwh, extract(hour from mid)::int as hour,
                   power(%(decay)s, through_day - (mid::date - date '1970-01-01')) as weight
            from r
            where mid::date - date '1970-01-01' <= through_day
        )
        select meter_id, through_day, hour, sum(weight * round(kwh * %(quantum)s)), sum(weight)
        from d group by meter_id, through_day, hour
        """,
        {
            "ids": data.meter_ids.tolist(),
            "zones": data.timezone.tolist(),
            "before": float(before),
            "days": int(days),
            "interval_s": data.interval_s,
            "no_credit": NO_CREDIT_FLAG,
            "decay": DECAY,
            "quantum": QUANTUM_PER_KWH,
        },
    ).fetchall()
    to_kw = 3600.0 / (data.interval_s * QUANTUM_PER_KWH)
    # meter -> (through_day, sums, weights), one hour a row
    folded: dict[str, tuple[int, Any, Any]] = {}
    for meter_id, day, hour, kwh_sum, weight in rows:
        _, s, w = folded.setdefault(
            meter_id, (int(day), np.zeros(PROFILE_HOURS, "<f8"), np.zeros(PROFILE_HOURS, "<f8"))
        )
        s[hour], w[hour] = kwh_sum * to_kw, weight
    return {m: MeterProfile(d, s.tobytes(), w.tobytes()) for m, (d, s, w) in folded.items()}


def _gateway_zones(conn: Any) -> dict[str, str]:
    """The zone each gateway last reported in its ``status.v1`` (its ``timezone`` setting): the
    zone it scores the meters that the registry gives none, so training uses it too. A name
    this machine's zone database does not know is left out (and logged)."""
    zones: dict[str, str] = {}
    for gateway_id, name in conn.execute(
        "select distinct on (gateway_id) gateway_id, status->>'timezone' from raw.gateway_status"
        " where status ? 'timezone' order by gateway_id, sent_at desc"
    ):
        try:
            zones[gateway_id] = check_zone(name)
        except ValueError:
            log.warning("gateway %s reports an unknown time zone %r", gateway_id, name)
    return zones


@dataclass
class _Rows:
    """The present readings of a :class:`MeterData` as the edge functions take them: grouped by
    meter (its index), time-sorted inside a meter; ``present`` is the ``(M, T)`` mask."""

    present: npt.NDArray[np.bool_]
    meter: npt.NDArray[np.int64]
    ts: npt.NDArray[np.int64]
    kwh: npt.NDArray[np.float64]
    on: npt.NDArray[np.bool_]
    flags: npt.NDArray[np.uint16]
    offsets: npt.NDArray[np.int64]


def _rows(data: MeterData) -> _Rows:
    t_n, m_n = data.kwh.shape
    present = data.present.T
    meter = np.broadcast_to(np.arange(m_n)[:, None], (m_n, t_n))[present]
    ts = np.broadcast_to(data.ts[None, :], (m_n, t_n))[present]
    offsets = zone_offsets(ts, meter, data.timezone.tolist())
    return _Rows(
        present,
        meter,
        ts,
        data.kwh.T[present],
        data.supply_on.T[present],
        data.flags.T[present],
        offsets,
    )


def long_memory(data: MeterData) -> Usual:
    """The long memory (``edge_agent.long_memory.fold``) of the present readings in
    :func:`reading_features`' row order, going on from ``data.profiles`` where a meter has one;
    its ``profiles`` are keyed by meter index."""
    return _long_memory(data, _rows(data))


def _long_memory(data: MeterData, r: _Rows) -> Usual:
    code = {m: i for i, m in enumerate(data.meter_ids.tolist())}
    start = {code[m]: p for m, p in data.profiles.items() if m in code}
    valid = supplied(r.on, r.flags, int(data.flag_bits.get(NO_CREDIT_FLAG, 0)))
    return fold(r.meter, r.ts, r.kwh, valid, r.offsets, data.interval_s, start)


def reading_features(data: MeterData) -> npt.NDArray[np.float32]:
    """Edge features of every present reading, ``(T, M, F)`` (zeros where absent)."""
    r = _rows(data)
    x = compute_features_grouped(
        r.meter,
        r.ts,
        r.kwh,
        r.on,
        r.flags,
        data.register_kwh.T[r.present],
        data.interval_s,
        data.flag_bits,
        utc_offset_s=r.offsets,
        usual=_long_memory(data, r),
    )
    out = np.zeros((data.n_intervals, data.n_meters, len(FEATURE_NAMES)), np.float32)
    out.transpose(1, 0, 2)[r.present] = x
    return out
