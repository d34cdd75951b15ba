"""Source input → validated buffer rows, or quarantine records with a reason. Never raises."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from edge_agent import wire
from edge_agent.fields import Row
from edge_agent.vocabulary import quarantine_reason

Clock = Callable[[], float]


class Validator:
    """``latest_now`` is the latest the time can be now (default: the wall clock); while the wall
    clock is in doubt (``edge_agent.clock.ClockWatch.latest_now``) it is the later of the wall
    clock and the time before the doubt, so a clock stepped back does not quarantine real-time
    readings as ``ts_in_future``, and a reading far ahead of both is still refused."""

    def __init__(
        self,
        clock: Clock,
        *,
        max_future_s: int = 300,
        max_kw: float = 1000.0,
        latest_now: Clock | None = None,
    ) -> None:
        self.clock = clock
        self.max_future_s = max_future_s
        self.max_kw = max_kw
        self.latest_now = latest_now or clock

    def latest_ts(self) -> float:
        """The latest reading time taken now (epoch seconds): ``max_future_s`` past
        ``latest_now``."""
        return self.latest_now() + self.max_future_s

    def check(self, obj: Any, raw: str | bytes, source: str) -> Row | wire.QuarantineRecord:
        """One decoded item (normally a dict) → a row, or a quarantine record saying why not."""
        now = self.clock()
        if not isinstance(obj, dict):
            return self.quarantine(raw, quarantine_reason("not_an_object"), now, source)
        try:
            reading = wire.Reading.model_validate(obj)
        except ValidationError as exc:
            return self.quarantine(
                raw, quarantine_reason("invalid", wire.explain(exc)), now, source
            )
        if reading.ts.timestamp() > self.latest_ts():
            return self.quarantine(raw, quarantine_reason("ts_in_future"), now, source)
        ceiling = self.max_kw * reading.interval_s / 3600.0
        if reading.kwh > ceiling:
            return self.quarantine(
                raw, quarantine_reason("implausible_kwh", f"above {ceiling:g}"), now, source
            )
        return reading_to_row(reading)

    def check_json(self, payload: bytes | str, source: str) -> list[Row | wire.QuarantineRecord]:
        """A JSON text holding one reading object or a list of them."""
        try:
            obj = json.loads(payload)
        except (ValueError, RecursionError) as exc:  # incl. JSONDecodeError, huge integers
            return [
                self.quarantine(
                    payload, quarantine_reason("malformed_json", str(exc)), self.clock(), source
                )
            ]
        items = obj if isinstance(obj, list) else [obj]
        if not items:
            return [self.quarantine(payload, quarantine_reason("empty_list"), self.clock(), source)]
        if len(items) == 1:
            return [self.check(items[0], payload, source)]
        return [self.check(item, json.dumps(item), source) for item in items]

    @staticmethod
    def quarantine(raw: str | bytes, reason: str, now: float, source: str) -> wire.QuarantineRecord:
        """A quarantine record for input that is not a reading, received ``now``."""
        return wire.QuarantineRecord.of(raw, reason, datetime.fromtimestamp(now, UTC), source)


def reading_to_row(r: wire.Reading) -> Row:
    """A validated reading → its buffer row (``edge_agent.fields`` order)."""
    return (
        r.meter_id,
        int(r.ts.timestamp()),
        r.interval_s,
        r.kwh,
        r.register_kwh,
        r.voltage_v,
        r.current_a,
        r.power_factor,
        r.temperature_c,
        r.humidity_pct,
        r.wind_ms,
        1 if r.supply == "on" else 0,
        ",".join(r.flags) if r.flags else None,
        r.score,
        r.model_version,
    )


def split(
    results: Iterable[Row | wire.QuarantineRecord],
) -> tuple[list[Row], list[wire.QuarantineRecord]]:
    rows: list[Row] = []
    bad: list[wire.QuarantineRecord] = []
    for item in results:
        if isinstance(item, wire.QuarantineRecord):
            bad.append(item)
        else:
            rows.append(item)
    return rows, bad
