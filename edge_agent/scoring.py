"""Scoring accepted readings and raising alerts, inside the Intake, before the buffer insert.

For each ``Intake.take`` call the :class:`Detector` takes the :class:`ModelBook` in use ONCE (a
hot swap happens between calls, never inside one, so every reading is scored by exactly one
version). By interval length, it reads the features' history of the meters from the buffer
(one query, in chunks), computes the features of history + new rows ``meters_per_call`` meters at
a time (bounded memory) and scores the new rows with one onnxruntime call per model. The score
and model version go into the rows, so they are committed with the reading and never change.

Which model scores a meter: the first of its model keys (:func:`edge_agent.registry.model_keys`:
``<name>.<class>.intermittent``, ``<name>.intermittent``, ``<name>.<class>``, e.g.
``iforest.urban``, from the registry file or the simulated fleet) whose model the agent holds and
is not older than the global one and that ``max_models`` leaves in use (:class:`ModelBook`), else
the global one (``<name>``). A meter with neither is stored
unscored (counter ``readings_without_model``). A model that fails to score leaves its rows unscored
(counter ``scoring_errors``), the other models' rows are scored.

Alerts (``alert.v1``) raised here, committed with their readings:

* ``anomaly``: ``score > threshold``, only for valid readings (supply on, no ``no_credit`` flag:
  an outage or an empty prepaid meter is not theft) of meters that are not transformer meters
  (those are judged by the energy balance);
* ``tamper``: the reading carries ``cover_open``, ``magnetic``, ``reverse_flow`` or
  ``clock_reset`` (also without a model);
* ``register_rollback``: the cumulative register went down since the previous reading (needs the
  features, so a model).

The features' long memory (:mod:`edge_agent.long_memory`) starts from each meter's stored
profile (``Profiles``), folds in the days of the history and new rows after it, and the profiles
it moved are written in the transaction of the readings (``Prepared.writes``): a call that does
not commit leaves them as they were, and the next call folds the same days again.

Each kind is rate-limited per meter by :class:`~edge_agent.alerts.Cooldown` (reading time).
Energy-balance alerts come from :mod:`edge_agent.energy`, after the commit.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from edge_agent.alerts import Cooldown, make_alert
from edge_agent.buffer import AcceptResult, AlertRecord, TxWrite

# Names only: numpy (~14 MB) is imported when a model is there to score with.
from edge_agent.feature_spec import (
    DEFAULT_FLAG_BITS,
    FEATURE_NAMES,
    NO_CREDIT_FLAG,
    TAMPER_FLAGS,
    MeterProfile,
    history_window_s,
    supplied,
)
from edge_agent.fields import (
    FLAGS,
    INTERVAL_S,
    KWH,
    METER_ID,
    READING_COLUMNS,
    REGISTER_KWH,
    SCORE,
    TS,
    Row,
)
from edge_agent.localtime import MeterClocks

if TYPE_CHECKING:
    import sqlite3

    import numpy as np
    import numpy.typing as npt

    from edge_agent.energy import EnergyBalance
    from edge_agent.model import LoadedModel

log = logging.getLogger(__name__)

_TAMPER = frozenset(TAMPER_FLAGS)
_NO_CREDIT_BIT = DEFAULT_FLAG_BITS[NO_CREDIT_FLAG]
_REGISTER_DROP = FEATURE_NAMES.index("register_drop")
# register_drop = log1p(decrease / level): ignore decreases below 1 % of a normal interval's use
# (rounding of a register reported in whole Wh, for instance).
_MIN_REGISTER_DROP = math.log1p(0.01)
SCORE_DECIMALS = 6
# History rows fetched from SQLite at a time (their Python objects live for one chunk only).
_HISTORY_CHUNK = 1024
# Row positions of the columns ReadingStore.history reads, in its order.
_HISTORY_COLUMNS = tuple(
    READING_COLUMNS.index(c)
    for c in ("meter_id", "ts", "kwh", "supply_on", "flags", "register_kwh")
)
# Most history rows reserved up front (address space only, ~150 MB, until written); beyond it the
# arrays grow by doubling.
_HISTORY_ROWS_RESERVED = 1 << 22
#: Meters whose features (a week of history rows each) are computed at once: bounds the agent's
#: peak memory, which would otherwise grow with the number of meters in one intake call.
METERS_PER_CALL = 50
#: ... and at most this many history slots (meters x intervals in the features' window) at
#: once: a week of 15-minute intervals is twice a week of 30-minute ones.
SLOTS_PER_CALL = 2048


@dataclass
class Prepared:
    rows: Sequence[Row]
    alerts: list[AlertRecord] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    keys: dict[str, tuple[str, str, int]] = field(default_factory=dict)  # alert id -> cooldown
    writes: list[TxWrite] = field(default_factory=list)  # committed with the readings


@dataclass(frozen=True)
class ModelBook:
    """The models in use, by name: the global one (``base``) and the others, ``base.<key>`` for
    the model keys of :func:`edge_agent.registry.model_keys` (a class, a class's intermittent
    meters, every class's intermittent meters). Never changed in place: the rollout swaps in a
    new book.

    ``limit`` (0: none) caps the models that score, the global one counted whenever it is held
    (meters missing from the registry fall back to it): each opens an onnxruntime session of a
    few MB. ``demand`` (``{model keys: meters}``, the registry's) says which members to keep
    then: one at a time, the member that moves the most meters off the model they would use
    otherwise (ties: the member more of those meters name first, then by name), dropping any
    chosen member that the later ones left with no meter. A member left out is held (its
    verified graph) but not used: its meters fall back to their next key, else the global
    model."""

    base: str = "iforest"
    models: Mapping[str, LoadedModel] = field(default_factory=dict)
    demand: Mapping[tuple[str, ...], int] = field(default_factory=dict)
    limit: int = 0
    #: The members (names) that may score: not stale, within ``limit``.
    usable: frozenset[str] = field(init=False)
    #: Members that would score some meter but for ``limit``, by name.
    left_out: list[str] = field(init=False)

    def __post_init__(self) -> None:
        usable = self._usable()
        left_out = sorted(n for n in self._fresh() - usable if self._moved(usable, n) > 0)
        object.__setattr__(self, "usable", usable)
        object.__setattr__(self, "left_out", left_out)

    def __bool__(self) -> bool:
        return bool(self.models)

    def member_name(self, key: str) -> str:
        return f"{self.base}.{key}"

    def for_meter(self, keys: Sequence[str]) -> LoadedModel | None:
        """The model of the first of a meter's model ``keys`` the book holds and may use, else
        the global one. A model older than the global model is stale (a newer model set without
        that member superseded it) and is not used."""
        for key in keys:
            name = self.member_name(key)
            if name in self.usable:
                return self.models[name]
        return self.models.get(self.base)

    @property
    def unused(self) -> list[str]:
        """Members held but not used (stale, or beyond ``limit``), by name."""
        return sorted(n for n in self.models if n != self.base and n not in self.usable)

    def with_model(self, model: LoadedModel) -> ModelBook:
        return replace(self, models={**self.models, model.name: model})

    def without(self, name: str) -> ModelBook:
        return replace(self, models={k: v for k, v in self.models.items() if k != name})

    def _fresh(self) -> set[str]:
        glob = self.models.get(self.base)
        return {
            name
            for name, m in self.models.items()
            if name != self.base and (glob is None or not _older(m, glob))
        }

    def _usable(self) -> frozenset[str]:
        fresh = self._fresh()
        room = self.limit - (self.base in self.models)
        if not self.limit or len(fresh) <= room:
            return frozenset(fresh)
        chosen: set[str] = set()
        for _ in range(len(fresh) * max(room, 1)):  # each round adds one; bounded all the same
            if len(chosen) >= room:
                break
            gains = {name: self._moved(chosen, name) for name in fresh - chosen}
            best = min(gains, key=lambda n: (-gains[n], -self._named_first(n), n), default=None)
            if best is None or gains[best] <= 0:
                break
            chosen.add(best)
            chosen -= {n for n in chosen if self._moved(chosen - {n}, n) == 0}
        return frozenset(chosen)

    def _named_first(self, name: str) -> int:
        """Meters whose best key is ``name``'s (a class's own forest before a shared one)."""
        return sum(
            m for keys, m in self.demand.items() if keys and self.member_name(keys[0]) == name
        )

    def _moved(self, chosen: Container[str], name: str) -> int:
        """Meters that ``name`` would score, added to ``chosen``: those whose keys reach it
        before any chosen member."""
        moved = 0
        for keys, meters in self.demand.items():
            for key in keys:
                member = self.member_name(key)
                if member == name:
                    moved += meters
                if member == name or member in chosen:
                    break
        return moved


class History(Protocol):
    """Where the features' history comes from (``ReadingStore.history``)."""

    def history(
        self, meter_ids: Iterable[str], ts_from: int, ts_to: int, interval_s: int
    ) -> sqlite3.Cursor: ...


class Profiles(Protocol):
    """Where each meter's long-memory profile is kept (``ProfileStore``)."""

    def load(self, meter_ids: Iterable[str]) -> dict[str, MeterProfile]: ...

    def save(self, profiles: Mapping[str, MeterProfile]) -> None: ...


class ActiveModels:
    """The model book in use: the rollout (``ModelManager``) swaps it between two intake calls,
    the detector reads it once per call. A swap closes the sessions of the members the new book
    does not use (a lazy model opens its session again if it is used once more); swaps and
    scoring both run on the agent's main loop, so no session is closed while it scores."""

    def __init__(
        self,
        base: str = "iforest",
        *,
        demand: Mapping[tuple[str, ...], int] | None = None,
        limit: int = 0,
    ) -> None:
        self._book = ModelBook(base, demand=dict(demand or {}), limit=limit)

    @property
    def book(self) -> ModelBook:
        return self._book

    @book.setter
    def book(self, book: ModelBook) -> None:
        self._book = book
        for name in book.unused:
            book.models[name].release()


def _older(a: LoadedModel, b: LoadedModel) -> bool:
    return a.created_at is not None and b.created_at is not None and a.created_at < b.created_at


@dataclass
class _Candidate:
    kind: str
    meter_id: str
    ts: int
    record: AlertRecord


class Detector:
    """Scores and raises alerts for each intake call. Built complete by
    ``edge_agent.agent.build_detection``; its models change only through ``ActiveModels``."""

    def __init__(
        self,
        gateway_id: str,
        readings: History,
        models: ActiveModels,
        *,
        cooldown: Cooldown,
        transformer_meters: frozenset[str] = frozenset(),
        energy: EnergyBalance | None = None,
        meter_models: Mapping[str, tuple[str, ...]] | None = None,
        clocks: MeterClocks | None = None,
        profiles: Profiles | None = None,
        meters_per_call: int = METERS_PER_CALL,
    ) -> None:
        self.gateway_id = gateway_id
        self.readings = readings
        self.models = models
        self.cooldown = cooldown
        self.transformer_meters = transformer_meters
        self.energy = energy
        #: Each meter's model keys, best first (``edge_agent.registry.meter_model_keys``).
        self.meter_models: Mapping[str, tuple[str, ...]] = meter_models or {}
        self.clocks = clocks or MeterClocks()
        self.profiles = profiles
        self.meters_per_call = max(1, meters_per_call)
        self._flag_masks: dict[str | None, int] = {None: 0, "": 0}

    # --- the two hooks of Intake.take ------------------------------------------------------

    def prepare(self, rows: Sequence[Row]) -> Prepared:
        book = self.models.book  # one version per model for the whole call
        if not book:
            flagged = [r for r in rows if r[FLAGS]]
            out = Prepared(rows)
            if flagged:
                self._add(out, self._rule_alerts(flagged))
            return out
        try:
            return self._score(book, rows)
        except Exception:  # never lose readings to a scoring bug: store them unscored
            log.exception("scoring failed; %d readings stored without a score", len(rows))
            out = Prepared(rows, counters={"scoring_errors": 1})
            flagged = [r for r in rows if r[FLAGS]]
            if flagged:
                self._add(out, self._rule_alerts(flagged))
            return out

    def committed(self, prepared: Prepared, result: AcceptResult, now: float) -> None:
        for aid in result.alert_ids:
            meter_id, kind, ts = prepared.keys[aid]
            self.cooldown.note(meter_id, kind, ts)
        if self.energy is not None and result.accepted:
            self.energy.observe(prepared.rows)
            for aid in self.energy.check(now):
                log.warning("energy balance alert %s", aid)

    # --- scoring ---------------------------------------------------------------------------

    def _mask(self, flags: str | None) -> int:
        mask = self._flag_masks.get(flags)
        if mask is None:
            mask = 0
            for name in (flags or "").split(","):
                mask |= DEFAULT_FLAG_BITS.get(name, 0)
            self._flag_masks[flags] = mask
        return mask

    def _score(self, book: ModelBook, rows: Sequence[Row]) -> Prepared:
        groups: dict[int, list[int]] = {}
        for i, r in enumerate(rows):
            groups.setdefault(int(r[INTERVAL_S]), []).append(i)
        out_rows: list[Row] = list(rows)
        candidates: list[_Candidate] = []
        scored = unscored = failed = 0
        keys = self.meter_models
        moved: dict[str, MeterProfile] = {}
        for interval_s, idx in groups.items():
            sub = rows if len(groups) == 1 else [rows[i] for i in idx]
            feats, keep, usable = self._features(sub, interval_s, moved)
            if not keep.size:
                continue
            by_model: dict[str, list[int]] = {}
            for j, pos in enumerate(keep.tolist()):
                model = book.for_meter(keys.get(sub[pos][METER_ID], ()))
                if model is None:
                    unscored += 1
                    if sub[pos][FLAGS]:
                        candidates.extend(self._rule_alerts([sub[pos]]))
                    continue
                by_model.setdefault(model.name, []).append(j)
            for name, js in by_model.items():
                model = book.models[name]
                x_m = feats if len(js) == keep.size else feats[js]
                try:
                    scores = model.score(x_m)
                    flagged = model.is_anomaly(scores)
                except Exception:  # one broken model must not leave the others' rows unscored
                    log.exception("model %s %s failed to score", model.name, model.version)
                    failed += len(js)
                    for j in js:
                        if sub[int(keep[j])][FLAGS]:
                            candidates.extend(self._rule_alerts([sub[int(keep[j])]]))
                    continue
                scored += len(js)
                for k, j in enumerate(js):
                    pos = int(keep[j])
                    r = sub[pos]
                    score = round(float(scores[k]), SCORE_DECIMALS)
                    out_rows[idx[pos]] = (*r[:SCORE], score, model.version)
                    x = x_m[k]
                    if flagged[k] and usable[j] and r[METER_ID] not in self.transformer_meters:
                        candidates.append(self._anomaly(model, r, score, x))
                    if r[FLAGS] and (set(r[FLAGS].split(",")) & _TAMPER):
                        candidates.append(self._tamper(r, x))
                    if x[_REGISTER_DROP] > _MIN_REGISTER_DROP:
                        candidates.append(self._rollback(r, x))
        counters = {"readings_scored": scored}
        if unscored:
            counters["readings_without_model"] = unscored
        if failed:
            counters["scoring_errors"] = 1
            counters["readings_unscored_model_error"] = failed
        out = Prepared(out_rows, counters=counters)
        if moved and self.profiles is not None:
            out.writes.append(partial(self.profiles.save, moved))
        self._add(out, candidates)
        return out

    def _features(
        self, sub: Sequence[Row], interval_s: int, moved: dict[str, MeterProfile]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
        """Features of the new rows ``sub`` (one interval length), with the positions in
        ``sub`` they belong to and whether each was taken with the supply on and credit left
        (``feature_spec.supplied``: only those raise anomaly alerts). Rows whose key is already
        stored, or repeated in ``sub``, are left out (the buffer will not store them). The
        meters' long-memory profiles that moved go into ``moved``."""
        import numpy as np

        from edge_agent.features import compute_features_grouped
        from edge_agent.long_memory import fold

        n_new = len(sub)
        new_cols = _columns(sub, _HISTORY_COLUMNS)
        ts_new = np.array(new_cols[1], dtype=np.int64)
        code_of = {m: i for i, m in enumerate(dict.fromkeys(new_cols[0]))}
        cursor = self.readings.history(
            code_of,
            int(ts_new.min()) - history_window_s(interval_s),
            int(ts_new.max()),
            interval_s,
        )
        # The history (~7 days of every meter concerned) goes a chunk at a time into arrays
        # sized for the most it can hold (a row per meter and slot; pages never written cost
        # no memory): Python objects for one chunk only, and no second copy of the week.
        span_s = int(ts_new.max()) - int(ts_new.min()) + history_window_s(interval_s)
        cap = min(len(code_of) * (span_s // interval_s + 2), _HISTORY_ROWS_RESERVED) + n_new
        cols = _ColumnArrays(cap)
        while chunk := cursor.fetchmany(_HISTORY_CHUNK):
            cols.append(self._arrays(_columns(chunk, range(6)), code_of), room_after=n_new)
        n_h = cols.size
        cols.append(self._arrays(new_cols, code_of))
        del new_cols
        n = n_h + n_new
        arrays = cols.filled()
        del cols
        is_new = np.zeros(n, dtype=np.int8)
        is_new[n_h:] = 1
        # By meter, then time, stored rows before new ones; lexsort is stable, so of a key
        # repeated among the new rows the first comes first (the one the buffer keeps).
        order = np.lexsort((is_new, arrays[1], arrays[0]))
        del is_new
        c_s, t_s = arrays[0][order], arrays[1][order]
        repeat = np.zeros(n, dtype=np.bool_)
        repeat[1:] = (c_s[1:] == c_s[:-1]) & (t_s[1:] == t_s[:-1])
        order = order[~repeat]
        del c_s, t_s, repeat
        # The columns in that order, each replacing its unsorted self: the groups of meters
        # below are then slices, not copies.
        for i in range(len(arrays)):
            arrays[i] = arrays[i][order]
        codes, ts, kwh, on, flags, reg = arrays
        del arrays
        meter_ids = list(code_of)
        offsets = self.clocks.offsets(meter_ids, codes, ts)  # each meter's local clock
        stored = self.profiles.load(meter_ids) if self.profiles is not None else {}
        start = {code_of[m]: p for m, p in stored.items()}
        del stored
        valid = supplied(on, flags, _NO_CREDIT_BIT)
        new_at = order - n_h  # position in ``sub`` of a new row, < 0 for a history row
        del order
        # Features meters_per_call meters at a time (their history included, only the new
        # rows' features kept), so the agent's memory does not grow with the gateway's size;
        # one history query.
        per_call = self.meters_per_call
        per_call = max(
            1, min(per_call, SLOTS_PER_CALL * interval_s // history_window_s(interval_s))
        )
        bounds = np.searchsorted(codes, np.arange(0, len(code_of) + per_call, per_call))
        x_new = np.zeros((n_new, len(FEATURE_NAMES)), dtype=np.float32)
        got = np.zeros(n_new, dtype=np.bool_)
        usable = np.zeros(n_new, dtype=np.bool_)
        for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
            local = np.flatnonzero(new_at[lo:hi] >= 0)
            if not local.size:
                continue
            usual = fold(
                codes[lo:hi], ts[lo:hi], kwh[lo:hi], valid[lo:hi], offsets[lo:hi], interval_s, start
            )
            moved.update((meter_ids[c], p) for c, p in usual.profiles.items())
            x = compute_features_grouped(
                codes[lo:hi],
                ts[lo:hi],
                kwh[lo:hi],
                on[lo:hi],
                flags[lo:hi],
                reg[lo:hi],
                interval_s,
                DEFAULT_FLAG_BITS,
                utc_offset_s=offsets[lo:hi],
                only=local,
                usual=usual,
            )
            pos = new_at[lo:hi][local]
            x_new[pos] = x
            got[pos] = True
            usable[pos] = valid[lo:hi][local]
        keep = np.flatnonzero(got).astype(np.int64)
        return x_new[keep], keep, usable[keep]

    def _arrays(
        self, cols: list[list[Any]], code_of: dict[str, int]
    ) -> tuple[npt.NDArray[Any], ...]:
        """``(meter code, ts, kwh, supply on, flag mask, register)`` arrays of row columns."""
        import numpy as np

        n = len(cols[0])
        flag_text = cols[4]
        distinct = set(flag_text)
        if distinct <= {None, ""}:
            flags = np.zeros(n, dtype=np.uint16)
        else:
            masks = {f: self._mask(f) for f in distinct}
            flags = np.fromiter(map(masks.__getitem__, flag_text), np.uint16, n)
        return (
            np.fromiter(map(code_of.__getitem__, cols[0]), np.int64, n),
            np.array(cols[1], dtype=np.int64),
            np.array(cols[2], dtype=np.float64),
            np.array(cols[3], dtype=np.bool_),
            flags,
            np.array(cols[5], dtype=np.float64),  # None -> NaN
        )

    # --- alerts ----------------------------------------------------------------------------

    def _named(self, x: npt.NDArray[np.float32] | None) -> dict[str, float]:
        if x is None:
            return {}
        return {name: round(float(v), 4) for name, v in zip(FEATURE_NAMES, x, strict=True)}

    def _anomaly(
        self, model: LoadedModel, r: Row, score: float, x: npt.NDArray[np.float32]
    ) -> _Candidate:
        record = make_alert(
            gateway_id=self.gateway_id,
            kind="anomaly",
            meter_id=r[METER_ID],
            ts=r[TS],
            basis=f"{model.name}:{model.version}",
            score=score,
            threshold=model.threshold,
            model_version=model.version,
            features=self._named(x),
            detail=f"{r[KWH]:g} kWh; model {model.name} {model.version}",
        )
        return _Candidate("anomaly", r[METER_ID], r[TS], record)

    def _tamper(self, r: Row, x: npt.NDArray[np.float32] | None) -> _Candidate:
        record = make_alert(
            gateway_id=self.gateway_id,
            kind="tamper",
            meter_id=r[METER_ID],
            ts=r[TS],
            features=self._named(x),
            detail=f"meter flags: {r[FLAGS]}",
        )
        return _Candidate("tamper", r[METER_ID], r[TS], record)

    def _rollback(self, r: Row, x: npt.NDArray[np.float32]) -> _Candidate:
        record = make_alert(
            gateway_id=self.gateway_id,
            kind="register_rollback",
            meter_id=r[METER_ID],
            ts=r[TS],
            features=self._named(x),
            detail=f"register {r[REGISTER_KWH]} kWh is below the previous reading's",
        )
        return _Candidate("register_rollback", r[METER_ID], r[TS], record)

    def _rule_alerts(self, rows: Sequence[Row]) -> list[_Candidate]:
        """Alerts that need no model: tamper flags."""
        return [self._tamper(r, None) for r in rows if set(r[FLAGS].split(",")) & _TAMPER]

    def _add(self, out: Prepared, candidates: list[_Candidate]) -> None:
        """Apply the cooldown in reading order; the survivors go with the readings."""
        suppressed = 0
        pending: dict[tuple[str, str], int] = {}
        for c in sorted(candidates, key=lambda c: (c.meter_id, c.kind, c.ts)):
            key = (c.meter_id, c.kind)
            prev = pending.get(key)
            if not self.cooldown.allows(c.meter_id, c.kind, c.ts) or (
                prev is not None and abs(c.ts - prev) < self.cooldown.seconds
            ):
                suppressed += 1
                continue
            pending[key] = c.ts
            out.alerts.append(c.record)
            out.keys[c.record.alert_id] = (c.meter_id, c.kind, c.ts)
        if suppressed:
            out.counters["alerts_suppressed_cooldown"] = suppressed


class _ColumnArrays:
    """Six column arrays filled a part at a time, grown (doubled) if a part does not fit."""

    _DTYPES = ("int64", "int64", "float64", "bool", "uint16", "float64")

    def __init__(self, capacity: int) -> None:
        import numpy as np

        self.size = 0
        self.arrays: list[npt.NDArray[Any]] = [np.empty(capacity, d) for d in self._DTYPES]

    def append(self, part: tuple[npt.NDArray[Any], ...], room_after: int = 0) -> None:
        import numpy as np

        k = len(part[0])
        need = self.size + k + room_after
        if need > len(self.arrays[0]):
            cap = max(need, 2 * len(self.arrays[0]))
            self.arrays = [
                np.concatenate([a[: self.size], np.empty(cap - self.size, a.dtype)])
                for a in self.arrays
            ]
        for a, p in zip(self.arrays, part, strict=True):
            a[self.size : self.size + k] = p
        self.size += k

    def filled(self) -> list[npt.NDArray[Any]]:
        return [a[: self.size] for a in self.arrays]


def _columns(rows: Sequence[Sequence[Any]], positions: Iterable[int]) -> list[list[Any]]:
    """Rows → the columns at ``positions`` (a list comprehension per column beats
    ``zip(*rows)`` on long lists)."""
    return [[r[j] for r in rows] for j in positions]
