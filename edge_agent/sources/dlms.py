"""DLMS/COSEM meters: their load profiles read every interval, caught up from the meter's own
memory after any outage, readings stamped with the meter's capture times.

Every ``interval_s`` (``read_delay_s`` after the boundary, so the meter has captured the entry
that ends there) each meter is read on a worker thread (at most ``workers`` at once): associate,
read the clock, the profile's capture objects, the energy register's scaler, then the profile
by range from the last entry taken to the meter's now (the first time, ``catch_up_days`` back),
release. The main loop turns the entries' energy registers into interval readings
(``edge_agent.sources.polled``): the reading of an entry is its register minus the previous
entry's, stamped with the entry's capture time. The last entry taken is committed with the
readings, so a gateway that was off for a day reads that day from the meter when it is back,
and nothing twice.

A meter whose clock is more than ``max_clock_skew_s`` from the gateway's (when the gateway's is
trusted) has its entries quarantined (``meter_clock_off``, with both clocks) and is counted on
from its last entry, placed at the time it really was (its stamp less the skew); set the
meter's clock and its next entries are readings again.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from edge_agent.buffer import AlertStore
from edge_agent.codec import ts_to_iso
from edge_agent.meters import axdr
from edge_agent.meters.dlms import CLOCK, DlmsClient, DlmsError
from edge_agent.settings import DlmsMeterSettings, DlmsSettings
from edge_agent.sources import Intake
from edge_agent.sources.polled import PREFIXES, CycleTimer, MeterBook, drain
from edge_agent.vocabulary import quarantine_reason

log = logging.getLogger(__name__)

KEY_PREFIX = PREFIXES["dlms"]
# Readings per buffer transaction: a catch-up of days of many meters is scored and committed
# in parts, which bounds the agent's memory.
COMMIT_ENTRIES = 400
# The most of a profile one read asks for: a meter far behind (a gateway off for weeks) catches
# up two days per read, so a read's answer stays small whatever the outage.
RANGE_S = 2 * 86400


@dataclass(frozen=True)
class ProfileRead:
    """One meter read at one boundary: its profile entries (capture time, register kWh) and
    both clocks, or why there is nothing."""

    meter_id: str
    boundary: int
    entries: list[tuple[int, float]] = field(default_factory=list)
    bad_entries: list[str] = field(default_factory=list)  # why, with the entry
    meter_clock: float = 0.0
    gateway_clock: float = 0.0
    # the end of the range asked for (meter time), when before the meter's now: nothing up to
    # it is asked for again, entries or not (a profile with a hole, a meter with less memory)
    read_short_of_now: int | None = None
    seconds: float = 0.0
    error: str | None = None


def client_for(m: DlmsMeterSettings) -> DlmsClient:
    password = None if m.password is None else m.password.get_secret_value().encode()
    return DlmsClient(
        m.host,
        m.port,
        client_sap=m.client_sap,
        server_sap=m.server_sap,
        password=password,
        timeout_s=m.timeout_s,
    )


def read_profile(
    client: DlmsClient, m: DlmsMeterSettings, since: int | None, baseline: int | None,
    catch_up_s: float, clock: Callable[[], float],
) -> ProfileRead:  # fmt: skip
    """Associate, read the clock and the profile entries after ``since`` (meter time), release.
    A ``since`` after the meter's now (its clock was set back) starts after ``baseline``."""
    started = time.monotonic()
    register = (3, m.energy_register)
    with client:
        meter_now = client.clock().timestamp()
        gateway_now = clock()
        columns = client.capture_objects((7, m.profile))
        try:
            at_clock = columns.index((CLOCK[0], CLOCK[1], 2))
            at_register = columns.index((3, m.energy_register, 2))
        except ValueError as exc:
            raise DlmsError(
                f"profile {m.profile} does not capture the clock and {m.energy_register}"
            ) from exc
        scale = client.scale_to_kwh(register)
        if since is not None and since >= meter_now:
            since = baseline if baseline is not None and baseline < meter_now else None
        start = meter_now - catch_up_s if since is None else since + 1
        end = min(meter_now, start + RANGE_S)
        rows = client.profile(
            datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC), (7, m.profile)
        )
    entries: list[tuple[int, float]] = []
    bad: list[str] = []
    for row in rows:
        try:
            ts = int(axdr.decode_datetime(row[at_clock])[0].timestamp())
            value = row[at_register]
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise ValueError(f"register value {value!r}")
            entries.append((ts, float(value) * scale))
        except (axdr.AxdrError, ValueError, TypeError, IndexError) as exc:
            bad.append(f"{exc}: {row!r}"[:300])
    return ProfileRead(
        m.meter_id,
        0,
        sorted(entries),
        bad,
        meter_now,
        gateway_now,
        int(end) if end < meter_now else None,
        time.monotonic() - started,
    )


class DlmsSource:
    name = "dlms"

    def __init__(
        self,
        settings: DlmsSettings,
        intake: Intake,
        alerts: AlertStore,
        gateway_id: str,
        *,
        max_kw: float,
        trusted: Callable[[], bool] = lambda: True,
        clients: Callable[[DlmsMeterSettings], DlmsClient] = client_for,
    ) -> None:
        """``trusted``: whether the gateway's wall clock can judge a meter's clock now."""
        self.settings = settings
        self.trusted = trusted
        self.clients = clients
        self.meters = {m.meter_id: m for m in settings.meters}
        self.book = MeterBook(
            KEY_PREFIX,
            list(self.meters),
            intake,
            alerts,
            gateway_id,
            interval_s=settings.interval_s,
            unreachable_after=settings.unreachable_after,
            max_kw=max_kw,
            source="dlms",
        )
        self._results: queue.SimpleQueue[ProfileRead] = queue.SimpleQueue()
        self._running: dict[str, Future[None]] = {}
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(
            max_workers=min(settings.workers, len(self.meters)), thread_name_prefix="dlms"
        )
        self._last_boundary: int | None = None
        self.cycle = CycleTimer("dlms")
        # The clock that decides the boundaries and judges meters' clocks; None: the agent's
        # (``poll(now)``). A seam for the benchmark and tests (a faster clock).
        self.clock: Callable[[], float] | None = None
        log.info("dlms: %d meters, every %d s", len(self.meters), settings.interval_s)

    def close(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def poll(self, now: float) -> int:
        if self.clock is not None:
            now = self.clock()
        reads = drain(self._results)
        if reads:  # taken before new reads start: they start where these ended
            self.cycle.answered([r.boundary for r in reads])
            self._take(reads, now)
        self._dispatch(now)
        return len(reads)

    def _dispatch(self, now: float) -> None:
        s = self.settings
        shifted = int(now) - s.read_delay_s
        boundary = shifted - shifted % s.interval_s
        if boundary == self._last_boundary:
            return  # a clock stepped back reads its boundaries again (nothing is taken twice)
        self._last_boundary = boundary
        clock = self.clock or time.time
        reads = 0
        for meter_id, m in self.meters.items():
            running = self._running.get(meter_id)
            if running is not None and not running.done():
                self.book.count("dlms_overruns")
                continue
            reads += 1
            state = self.book.state(meter_id)
            since = state.read_to if state.read_to is not None else state.ts
            self._running[meter_id] = self._pool.submit(
                self._read, m, boundary, since, state.ts, clock
            )
        self.cycle.start(boundary, reads)

    def _read(
        self,
        m: DlmsMeterSettings,
        boundary: int,
        since: int | None,
        baseline: int | None,
        clock: Callable[[], float],
    ) -> None:
        if self._stop.is_set():
            return
        catch_up = self.settings.catch_up_days * 86400
        try:
            got = read_profile(self.clients(m), m, since, baseline, catch_up, clock)
            self._results.put(replace(got, boundary=boundary))
        except Exception as exc:  # noqa: BLE001 - one meter failing never stops the others
            if not isinstance(exc, DlmsError | OSError | axdr.AxdrError):
                log.exception("dlms: reading meter %s failed", m.meter_id)
            self._results.put(
                ProfileRead(m.meter_id, boundary, error=f"{type(exc).__name__}: {exc}")
            )

    def _take(self, reads: list[ProfileRead], now: float) -> None:
        book = self.book
        for r in reads:
            if r.error is not None:
                book.count("dlms_reads_failed")
                book.failed(r.meter_id, r.boundary, r.error)
                continue
            book.count("dlms_reads_ok")
            book.count("dlms_profile_entries", len(r.entries))
            book.reachable(r.meter_id)
            for why in r.bad_entries:
                book.quarantine(
                    json.dumps({"meter_id": r.meter_id, "entry": why}),
                    quarantine_reason("profile_entry_invalid"),
                    now,
                )
            skew = r.meter_clock - r.gateway_clock
            if abs(skew) > self.settings.max_clock_skew_s and self.trusted():
                book.count("dlms_clock_off")
                for ts, kwh in r.entries:
                    book.quarantine(
                        json.dumps(
                            {
                                "meter_id": r.meter_id,
                                "ts": ts_to_iso(ts),
                                "register_kwh": kwh,
                                "meter_clock": ts_to_iso(int(r.meter_clock)),
                                "gateway_clock": ts_to_iso(int(r.gateway_clock)),
                            }
                        ),  # fmt: skip
                        quarantine_reason(
                            "meter_clock_off",
                            f"the meter's clock is {skew:+.0f} s from the gateway's",
                        ),
                        now,
                    )
                if r.entries:
                    # counted on from the last entry, at the time it really was (its stamp
                    # less the skew): once the meter's clock is set, its entries follow on;
                    # read on from its stamp (meter time), so none is quarantined twice
                    last_ts, last_kwh = r.entries[-1]
                    book.rebase(r.meter_id, last_ts - round(skew), last_kwh)
                    book.seen(r.meter_id, last_ts)
                if r.read_short_of_now is not None:
                    book.seen(r.meter_id, r.read_short_of_now)
                continue
            for at in range(0, len(r.entries), COMMIT_ENTRIES):
                chunk = r.entries[at : at + COMMIT_ENTRIES]
                for ts, kwh in chunk:
                    book.answered(r.meter_id, ts, {"register_kwh": kwh}, now)
                book.seen(r.meter_id, chunk[-1][0])
                if book.pending() >= COMMIT_ENTRIES and not book.commit(now):
                    return  # buffer full: what is not committed is read again next time
            if r.read_short_of_now is not None:
                book.seen(r.meter_id, r.read_short_of_now)
            if r.entries:
                log.info(
                    "dlms meter %s: %d profile entries in %.2f s", r.meter_id, len(r.entries),
                    r.seconds,
                )  # fmt: skip
        book.commit(now)
