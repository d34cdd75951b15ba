"""Small builders shared by tests: buffer rows, a hand-moved clock."""

from __future__ import annotations

from edge_agent.fields import Row, make_row

T0 = 1_772_323_200  # 2026-03-01T00:00:00Z


def row(meter: str = "m1", k: int = 0, kwh: float = 0.25, **kw: object) -> Row:
    """A buffer row for meter ``meter``, interval ``k`` after T0 (30-minute intervals, supply on;
    other fields by wire name)."""
    values: dict[str, object] = {"interval_s": 1800, "supply": 1, **kw}
    return make_row(meter_id=meter, ts=T0 + 1800 * (k + 1), kwh=kwh, **values)


class Clock:
    """A clock tests move by hand."""

    def __init__(self, now: float = 1_790_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
