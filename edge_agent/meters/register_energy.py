"""From a cumulative energy register read at interval boundaries to interval readings.

A polled meter keeps no intervals: it has a register that only grows. The reading of the
interval ending at boundary ``B`` is the register at ``B`` minus the register at the last
boundary read (the baseline). The meter is its own buffer: a boundary that was not read (the
meter did not answer, the gateway was off, the buffer was full) costs the interval its own
reading, not its energy: the next reading spans the whole gap (``interval_s`` = the gap, at
most one day; a longer gap's energy goes to quarantine with its register values, and the
register restarts the count).

What a register can do besides growing, and what becomes of it:

* it **wraps** at its rollover (an integer register at 2^bits): the reading is the energy across
  the wrap, flagged ``register_rollover``;
* it **goes back** otherwise (a reset, a swapped meter, a rolled-back register): the reading is
  the register's new value (energy since a reset to zero), flagged ``register_reset``, and the
  detector raises its ``register_rollback`` alert; never a negative reading;
* it **jumps** further than ``max_kw`` allows in the time since the baseline (a garbled read,
  a wrong word order): the value is quarantined and held as a suspect, the baseline stays; the
  next read decides: plausible against the baseline, the suspect was garbage; plausible against
  the suspect, the meter really moved (the next reading counts from the suspect, flagged
  ``register_jump``); neither, quarantined again;
* it is **not a number** (NaN, infinite, negative): quarantined, the baseline stays.

The gateway's clock stamps these readings, so the source reads nothing while the clock is
suspect (``edge_agent.clock``); a baseline stamped more than a day after a read (a clock that
was far ahead, then corrected) is replaced, its register values quarantined as ``clock_back``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from edge_agent.codec import ts_to_iso
from edge_agent.vocabulary import quarantine_reason

MAX_SPAN_S = 86400  # the longest interval a reading may cover (``interval_s``)
#: Flags this module sets on a reading.
ROLLOVER_FLAG = "register_rollover"
RESET_FLAG = "register_reset"
JUMP_FLAG = "register_jump"
#: Below this voltage at the poll the reading says ``supply = "off"``.
SUPPLY_OFF_BELOW_V = 50.0


@dataclass(frozen=True)
class MeterState:
    """What is kept of a polled meter between polls (in the buffer's meta, committed with the
    readings it produced)."""

    ts: int | None = None  # boundary of the baseline
    register: float | None = None  # kWh at ``ts``
    suspect_ts: int | None = None  # an implausible register value, held for one more read
    suspect: float | None = None
    missed_since: int | None = None  # first boundary not read, while the meter stays silent
    alerted: bool = False  # meter_unreachable raised for this silence
    errors: int = 0  # failed polls, all time
    last_error: str | None = None
    read_to: int | None = None  # a profile read: the latest entry read, taken or not

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | None) -> MeterState:
        if text is None:
            return cls()
        return cls(**json.loads(text))


@dataclass(frozen=True)
class Outcome:
    """What one read of a meter gives: the new state, and a reading (wire dict) or a quarantine
    reason with the raw values, or neither (a first read, a stale one)."""

    state: MeterState
    reading: dict[str, Any] | None = None
    quarantine: str | None = None
    raw: str = ""


def take_read(
    meter_id: str,
    state: MeterState,
    boundary: int,
    values: dict[str, float],
    *,
    max_kw: float,
    rollover: float | None = None,
) -> Outcome:
    """The outcome of reading ``values`` (register map fields) at ``boundary``."""
    state = replace(state, missed_since=None, alerted=False)
    reg = values["register_kwh"]
    raw = json.dumps(
        {
            "meter_id": meter_id,
            "ts": ts_to_iso(boundary),
            "values": values,
            "baseline": state.register,
        }
    )
    if not math.isfinite(reg) or reg < 0:
        return Outcome(
            state,
            quarantine=quarantine_reason("register_invalid", f"register_kwh = {reg}"),
            raw=raw,
        )
    if state.register is None or state.ts is None:
        return Outcome(replace(state, ts=boundary, register=reg))
    if boundary <= state.ts:
        if state.ts - boundary <= MAX_SPAN_S:
            return Outcome(state)  # read again (a restart) or a small step back: wait
        # the baseline was stamped by a clock far ahead (corrected since): start again here
        return Outcome(
            replace(state, ts=boundary, register=reg, suspect_ts=None, suspect=None),
            quarantine=quarantine_reason(
                "clock_back", f"baseline stamped {state.ts - boundary} s after this read"
            ),
            raw=raw,
        )
    span = boundary - state.ts
    delta = reg - state.register
    flags: list[str] = []

    def ceiling(seconds: int) -> float:
        return max_kw * seconds / 3600.0

    if delta < 0:
        wrapped = None if rollover is None else reg + rollover - state.register
        if wrapped is not None and 0 <= wrapped <= ceiling(span):
            delta = wrapped
            flags.append(ROLLOVER_FLAG)
        else:
            delta = reg
            flags.append(RESET_FLAG)
    elif delta > ceiling(span):
        if (
            state.suspect is not None
            and state.suspect_ts is not None
            and boundary > state.suspect_ts
            and 0 <= reg - state.suspect <= ceiling(boundary - state.suspect_ts)
        ):
            span, delta = boundary - state.suspect_ts, reg - state.suspect
            flags.append(JUMP_FLAG)
        else:
            held = replace(state, suspect_ts=boundary, suspect=reg)
            return Outcome(
                held,
                quarantine=quarantine_reason(
                    "register_jump",
                    f"register_kwh rose {delta:.3f} kWh in {span} s, "
                    f"more than max_kw {max_kw:g} allows",
                ),
                raw=raw,
            )
    state = replace(state, ts=boundary, register=reg, suspect_ts=None, suspect=None)
    if span > MAX_SPAN_S:
        return Outcome(
            state,
            quarantine=quarantine_reason(
                "gap_too_long", f"{delta:.3f} kWh over {span} s unread (more than a day)"
            ),
            raw=raw,
        )
    reading: dict[str, Any] = {
        "meter_id": meter_id,
        "ts": ts_to_iso(boundary),
        "interval_s": span,
        "kwh": round(delta, 3),
        "register_kwh": round(reg, 3),
    }
    for name in ("voltage_v", "current_a", "power_factor"):
        if name in values:
            reading[name] = round(values[name], 3)
    voltage = values.get("voltage_v")
    if voltage is not None and math.isfinite(voltage):
        reading["supply"] = "off" if voltage < SUPPLY_OFF_BELOW_V else "on"
    if flags:
        reading["flags"] = flags
    return Outcome(state, reading=reading)


def missed(state: MeterState, boundary: int, error: str) -> MeterState:
    """The meter did not answer the read of ``boundary``."""
    return replace(
        state,
        missed_since=state.missed_since if state.missed_since is not None else boundary,
        errors=state.errors + 1,
        last_error=error[:200],
    )
