"""What the sources that read meters themselves (Modbus, DLMS/COSEM) share: each meter's state
(its last energy register, its silence), turning register reads into readings
(``edge_agent.meters.register_energy``), the ``meter_unreachable`` alert, and one buffer
transaction for a batch of reads with the meters' new states.

A :class:`MeterBook` is used by the agent's main loop only (it owns the buffer). A batch is
built with :meth:`answered`, :meth:`failed` and :meth:`quarantine`, then :meth:`commit` writes
it; a batch the buffer refuses leaves every state as it was (the meters keep counting, so the
next reads cover it).
"""

from __future__ import annotations

import json
import logging
import queue
import time
from dataclasses import replace
from functools import partial
from typing import TypeVar

from edge_agent.alerts import make_alert
from edge_agent.buffer import AlertRecord, AlertStore, BufferFull, Meta
from edge_agent.fields import Row
from edge_agent.meters.register_energy import MeterState, missed, take_read
from edge_agent.sources import Intake
from edge_agent.vocabulary import quarantine_reason
from edge_agent.wire import QuarantineRecord

log = logging.getLogger(__name__)

T = TypeVar("T")
UNREACHABLE = "meter_unreachable"
#: Fields a meter reports beside its energy: one out of range is dropped, not the energy.
AUXILIARY = ("voltage_v", "current_a", "power_factor", "supply")
#: Meta key prefixes of the sources that read meters themselves (one state per meter).
PREFIXES = {"modbus": "modbus:", "dlms": "dlms:"}


def meter_states(meta: Meta) -> dict[str, dict[str, object]]:
    """Every polled meter's state as the buffer holds it (``edge-agent status``): source, last
    register and when, failed reads, the last error, silent since when."""
    out: dict[str, dict[str, object]] = {}
    for source, prefix in PREFIXES.items():
        for meter_id, text in sorted(meta.prefixed(prefix).items()):
            state = MeterState.from_json(text)
            out[meter_id] = {
                "source": source,
                "last_ts": state.ts,
                "register_kwh": state.register,
                "errors": state.errors,
                "last_error": state.last_error,
                "silent_since": state.missed_since,
            }
    return out


def drain(q: queue.SimpleQueue[T]) -> list[T]:
    """Everything the worker threads have put on ``q`` so far."""
    out: list[T] = []
    while True:
        try:
            out.append(q.get_nowait())
        except queue.Empty:
            return out


class MeterBook:
    def __init__(
        self,
        prefix: str,
        meter_ids: list[str],
        intake: Intake,
        alerts: AlertStore,
        gateway_id: str,
        *,
        interval_s: int,
        unreachable_after: int,
        max_kw: float,
        source: str,
    ) -> None:
        """``prefix``: the meta key prefix of the states (``modbus:``); ``source``: the name
        quarantine records carry."""
        self.prefix = prefix
        self.intake = intake
        self.alert_store = alerts
        self.gateway_id = gateway_id
        self.interval_s = interval_s
        self.unreachable_after = unreachable_after
        self.max_kw = max_kw
        self.source = source
        self.states = {m: MeterState.from_json(intake.progress(prefix + m)) for m in meter_ids}
        self._begin()

    def _begin(self) -> None:
        self._next = dict(self.states)
        self._changed: set[str] = set()
        self._results: list[Row | QuarantineRecord] = []
        self._alerts: list[AlertRecord] = []
        self.counters: dict[str, int] = {}

    def state(self, meter_id: str) -> MeterState:
        """The meter's state as this batch has it so far."""
        return self._next[meter_id]

    def _set(self, meter_id: str, state: MeterState) -> None:
        self._next[meter_id] = state
        self._changed.add(meter_id)

    def pending(self) -> int:
        """Readings and quarantine records in the batch so far."""
        return len(self._results)

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def answered(
        self,
        meter_id: str,
        ts: int,
        values: dict[str, float],
        now: float,
        rollover: float | None = None,
    ) -> None:
        """The meter's register (and other fields) read at ``ts``."""
        out = take_read(
            meter_id, self.state(meter_id), ts, values, max_kw=self.max_kw, rollover=rollover
        )
        self._set(meter_id, out.state)
        v = self.intake.validator
        if out.reading is not None:
            raw = json.dumps(out.reading)
            result = v.check(out.reading, raw, self.source)
            aux = {k: x for k, x in out.reading.items() if k in AUXILIARY}
            if isinstance(result, QuarantineRecord) and aux:
                # a garbled voltage must not take the interval's energy with it: the reading
                # goes on without the other fields, which are quarantined with the reason
                energy = {k: x for k, x in out.reading.items() if k not in AUXILIARY}
                kept = v.check(energy, json.dumps(energy), self.source)
                if not isinstance(kept, QuarantineRecord):
                    self._results.append(kept)
                    result = v.quarantine(
                        raw, quarantine_reason("fields_dropped", result.reason), now, self.source
                    )
            self._results.append(result)
        elif out.quarantine is not None:
            self._results.append(v.quarantine(out.raw, out.quarantine, now, self.source))

    def reachable(self, meter_id: str) -> None:
        """The meter answered (whatever it said): its silence, if any, is over."""
        state = self.state(meter_id)
        if state.missed_since is not None or state.alerted:
            self._set(meter_id, replace(state, missed_since=None, alerted=False))

    def seen(self, meter_id: str, ts: int) -> None:
        """Entries up to ``ts`` were read (readings, quarantined or held): not read again."""
        state = self.state(meter_id)
        if state.read_to is None or ts > state.read_to:
            self._set(meter_id, replace(state, read_to=ts))

    def rebase(self, meter_id: str, ts: int, register_kwh: float) -> None:
        """Count the meter's energy from ``register_kwh`` at ``ts`` on (what came before is
        quarantined by the caller)."""
        state = self.state(meter_id)
        self._set(
            meter_id, replace(state, ts=ts, register=register_kwh, suspect=None, suspect_ts=None)
        )

    def quarantine(self, raw: str, reason: str, now: float) -> None:
        self._results.append(self.intake.validator.quarantine(raw, reason, now, self.source))

    def failed(self, meter_id: str, boundary: int, error: str) -> None:
        """The meter did not answer at ``boundary``; the alert after ``unreachable_after``."""
        state = missed(self.state(meter_id), boundary, error)
        assert state.missed_since is not None
        silent = (boundary - state.missed_since) // self.interval_s + 1
        if not state.alerted and silent >= self.unreachable_after:
            self._alerts.append(
                make_alert(
                    gateway_id=self.gateway_id,
                    kind=UNREACHABLE,
                    meter_id=meter_id,
                    ts=state.missed_since,
                    detail=f"no answer at {silent} reads: {state.last_error}",
                )
            )
            state = replace(state, alerted=True)
        self._set(meter_id, state)

    def commit(self, now: float) -> bool:
        """Write the batch; False (and nothing written) when the buffer is full."""
        alerts = self._alerts
        try:
            self.intake.take(
                self._results,
                meta={self.prefix + m: self._next[m].to_json() for m in sorted(self._changed)},
                also=[partial(self._raise, alerts, now)] if alerts else (),
                counters=self.counters,
            )
        except BufferFull:
            log.warning("buffer full: %d %s reads not taken", len(self._changed), self.source)
            self._begin()
            return False
        for a in alerts:
            log.warning("meter %s unreachable since %d", a.meter_id, a.ts)
        self.states = self._next
        self._begin()
        return True

    def _raise(self, alerts: list[AlertRecord], now: float) -> None:
        self.alert_store.insert(alerts, now)


class CycleTimer:
    """Logs how long reading every meter at a boundary took (the poll cycle):
    ``<source> boundary <ts>: poll cycle <s> s``."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._boundary: int | None = None
        self._started = 0.0
        self._left = 0

    def start(self, boundary: int, reads: int) -> None:
        self._boundary, self._started, self._left = boundary, time.monotonic(), reads

    def answered(self, boundaries: list[int]) -> None:
        if self._boundary is None:
            return
        self._left -= sum(1 for b in boundaries if b == self._boundary)
        if self._left <= 0:
            log.info(
                "%s boundary %d: poll cycle %.3f s",
                self.source,
                self._boundary,
                time.monotonic() - self._started,
            )
            self._boundary = None
