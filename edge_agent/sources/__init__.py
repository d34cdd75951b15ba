"""Where readings come from: a local MQTT topic, a spool directory, a simulated fleet.

Every source hands its input to an :class:`Intake` (validation, then one buffer transaction) and
acknowledges its own upstream only after that transaction committed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from edge_agent import wire
from edge_agent.buffer import AcceptResult, Buffer
from edge_agent.codec import Row
from edge_agent.validate import Validator, split


class Source(Protocol):
    name: str

    def poll(self, now: float) -> int:
        """Take what is available now; return how many items were handled (0 = idle)."""
        ...

    def close(self) -> None: ...


class Intake:
    """Validation + the buffer: the one door into the gateway's store."""

    def __init__(self, buffer: Buffer, validator: Validator) -> None:
        self.buffer = buffer
        self.validator = validator

    def take(
        self,
        results: Iterable[Row | wire.QuarantineRecord],
        *,
        meta: dict[str, object] | None = None,
        also: Sequence[tuple[str, tuple[Any, ...]]] = (),
    ) -> AcceptResult:
        rows, bad = split(results)
        return self.buffer.accept(rows, bad, now=self.validator.clock(), meta=meta, also=also)


__all__ = ["Intake", "Source"]
