"""Where readings come from: a local MQTT topic, a spool directory, a simulated fleet.

Every source hands its input to an :class:`Intake` (validation, then one buffer transaction) and
acknowledges its own upstream only after that transaction committed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Protocol

from edge_agent import wire
from edge_agent.buffer import AcceptResult, BufferFull, Meta, ReadingStore, TxWrite
from edge_agent.fields import Row
from edge_agent.validate import Validator, split

if TYPE_CHECKING:
    from edge_agent.scoring import Detector


class Source(Protocol):
    name: str

    def poll(self, now: float) -> int:
        """Take what is available now; return how many items were handled (0 = idle)."""
        ...

    def close(self) -> None: ...


class Intake:
    """Validation + scoring + the buffer: the one door into the gateway's store.

    With a :class:`~edge_agent.scoring.Detector`, accepted readings are scored (and alerts
    raised) after validation and before the insert, so the score, the model version and the
    alerts are committed in the same transaction as the readings."""

    def __init__(
        self,
        readings: ReadingStore,
        meta: Meta,
        validator: Validator,
        detector: Detector | None = None,
    ) -> None:
        self.readings = readings
        self._meta = meta
        self.validator = validator
        self.detector = detector
        # told when the buffer refuses a call for lack of room (the agent's intake gate)
        self.on_full: Callable[[BufferFull], None] | None = None

    def progress(self, key: str) -> str | None:
        """A source's progress marker, as last committed with its readings (``meta=``)."""
        return self._meta.get(key)

    def take(
        self,
        results: Iterable[Row | wire.QuarantineRecord],
        *,
        meta: dict[str, object] | None = None,
        also: Sequence[TxWrite] = (),
        counters: dict[str, int] | None = None,
    ) -> AcceptResult:
        """Commit the validated ``results`` (rows and quarantine records) in one transaction,
        with the source's progress markers (``meta``), its own writes (``also``) and counters."""
        try:
            return self._take(results, meta, also, counters or {})
        except BufferFull as exc:  # nothing was written: the source keeps its input
            if self.on_full is not None:
                self.on_full(exc)
            raise

    def _take(
        self,
        results: Iterable[Row | wire.QuarantineRecord],
        meta: dict[str, object] | None,
        also: Sequence[TxWrite],
        counters: dict[str, int],
    ) -> AcceptResult:
        rows, bad = split(results)
        now = self.validator.clock()
        if self.detector is None or not rows:
            return self.readings.accept(rows, bad, now=now, meta=meta, also=also, counters=counters)
        prepared = self.detector.prepare(rows)
        result = self.readings.accept(
            prepared.rows,
            bad,
            now=now,
            meta=meta,
            also=(*also, *prepared.writes),
            alerts=prepared.alerts,
            counters=_sum(prepared.counters, counters),
        )
        try:
            self.detector.committed(prepared, result, now)
        except BufferFull as exc:
            # The readings are committed: the source must not offer them again (a second set
            # of quarantine rows). What failed (an energy-balance alert) is judged again with
            # the next readings; the gate hears of the full buffer.
            if self.on_full is not None:
                self.on_full(exc)
        return result


def _sum(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    out = dict(a)
    for key, value in b.items():
        out[key] = out.get(key, 0) + value
    return out


__all__ = ["Intake", "Source"]
