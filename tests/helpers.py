"""Small builders shared by tests."""

from __future__ import annotations

from edge_agent.codec import Row

T0 = 1_772_323_200  # 2026-03-01T00:00:00Z


def row(meter: str = "m1", k: int = 0, kwh: float = 0.25, **kw: object) -> Row:
    """A buffer row for meter ``meter``, interval ``k`` after T0 (30-minute intervals)."""
    values = {
        "register_kwh": None,
        "voltage_v": None,
        "current_a": None,
        "power_factor": None,
        "temperature_c": None,
        "humidity_pct": None,
        "wind_ms": None,
        "supply_on": 1,
        "flags": None,
        "score": None,
        "model_version": None,
    }
    values.update(kw)
    return (meter, T0 + 1800 * (k + 1), 1800, kwh, *values.values())


class Clock:
    """A clock tests move by hand."""

    def __init__(self, now: float = 1_790_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class MemoryPublisher:
    """The in-memory Publisher: records what would go on the wire."""

    def __init__(self) -> None:
        self.up = True
        self.sent: list[tuple[str, bytes, int, bool]] = []

    def connected(self) -> bool:
        return self.up

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> bool:
        if not self.up:
            return False
        self.sent.append((topic, payload, qos, retain))
        return True
