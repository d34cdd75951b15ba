"""Reading the database (and the warehouse, and dbt's and the quality gates' result files)
into the exporter's state, incrementally: each poll reads only what arrived since the last.

* Gateways: ``raw.gateway_status`` rows received since the newest one seen, less an overlap
  (commit order is not ``received_at`` order), newest last; at start, the current status of
  every gateway heard within ``metrics_forget_after_s``.
* Central: ``raw.ingest_batches``, ``raw.quarantine`` and ``raw.alerts`` rows in
  ``[lower, now() - settle)``, each row counted once; counters start at 0 when the exporter
  starts, as any process's counters do (``rate()`` and ``increase()`` handle restarts).
"""

from __future__ import annotations

import json
import logging
import time
import urllib.parse
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

from central.db import connect
from central.metrics.settings import MetricsSettings
from central.metrics.state import ExporterState, RunResult, WarehouseTable
from edge_agent.health import view_of
from edge_agent.vocabulary import ALERT_KINDS

log = logging.getLogger(__name__)

_STATUS_SINCE = (
    "select gateway_id, extract(epoch from received_at)::float8, status "
    "from raw.gateway_status where received_at >= to_timestamp(%s) order by received_at"
)
_STATUS_CURRENT = (
    "select distinct on (gateway_id) gateway_id, extract(epoch from received_at)::float8, status "
    "from raw.gateway_status where received_at >= now() - make_interval(secs => %s) "
    "order by gateway_id, received_at desc"
)
_BATCHES = (
    "select status, readings, inserted, duplicates, conflicts, "
    "extract(epoch from stored_at - sent_at)::float8 from raw.ingest_batches "
    "where stored_at >= to_timestamp(%s) and stored_at < to_timestamp(%s)"
)
_QUARANTINE = (
    "select reason, count(*) from raw.quarantine "
    "where stored_at >= to_timestamp(%s) and stored_at < to_timestamp(%s) group by reason"
)
_ALERTS = (
    "select kind, count(*) from raw.alerts "
    "where received_at >= to_timestamp(%s) and received_at < to_timestamp(%s) group by kind"
)
_WATERMARKS = (
    "select table_name, toUnixTimestamp64Micro(watermark) / 1e6 as watermark, "
    "toUnixTimestamp64Micro(updated_at) / 1e6 as loaded_at, rows_loaded "
    "from raw.load_watermarks final format JSONEachRow"
)


class Poller:
    def __init__(self, settings: MetricsSettings, state: ExporterState) -> None:
        self.s = settings
        self.state = state
        self._conn: psycopg.Connection | None = None
        self._status_from: float | None = None  # newest received_at seen
        self._lower: float | None = None  # central counters: rows from here on not counted yet
        self._next_warehouse = 0.0
        self._files: dict[Path, float] = {}  # result file → mtime read

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def poll(self) -> None:
        """One round; a database error is counted and logged, the next round tries again."""
        started = time.monotonic()
        ok = True
        try:
            self._poll_database()
        except psycopg.Error as exc:
            ok = False
            log.warning("metrics: cannot read the database: %s", str(exc).strip()[:200])
            self.close()
        self._poll_warehouse()
        self._poll_files()
        with self.state.lock:
            self.state.polls += 1
            self.state.last_poll_s = time.monotonic() - started
            if ok:
                self.state.last_poll_ok = time.time()
            else:
                self.state.poll_errors += 1

    # --- PostgreSQL -----------------------------------------------------------------------

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.s.pg_dsn, autocommit=True)
        return self._conn

    def _poll_database(self) -> None:
        conn = self._connection()
        now = _scalar(conn, "select extract(epoch from now())::float8")
        upper = now - self.s.metrics_settle_s
        if self._lower is None:
            self._lower = now  # counters start with the exporter
        if self._status_from is None:
            rows = conn.execute(_STATUS_CURRENT, (self.s.metrics_forget_after_s,)).fetchall()
        else:
            since = self._status_from - self.s.metrics_status_overlap_s
            rows = conn.execute(_STATUS_SINCE, (since,)).fetchall()
        batches = quarantine = alerts = []
        if upper > self._lower:
            batches = conn.execute(_BATCHES, (self._lower, upper)).fetchall()
            quarantine = conn.execute(_QUARANTINE, (self._lower, upper)).fetchall()
            alerts = conn.execute(_ALERTS, (self._lower, upper)).fetchall()
        st = self.state
        with st.lock:
            for gateway_id, received_at, status in rows:
                if isinstance(status, dict):
                    st.see_status(gateway_id, view_of(status, received_at))
                if self._status_from is None or received_at > self._status_from:
                    self._status_from = received_at
            if self._status_from is None:
                self._status_from = now
            st.forget_before(now - self.s.metrics_forget_after_s)
            for status, readings, inserted, duplicates, conflicts, latency in batches:
                st.batches[status] += 1
                if status != "stored":
                    continue
                st.readings["inserted"] += inserted
                st.readings["duplicate"] += duplicates
                st.readings["conflict"] += conflicts
                st.readings["invalid"] += max(readings - inserted - duplicates - conflicts, 0)
                st.delivery.observe(latency)
            for reason, n in quarantine:
                st.quarantined[st.reason_label(reason)] += n
            for kind, n in alerts:
                st.alerts[kind if kind in ALERT_KINDS else "other"] += n
        if upper > self._lower:
            self._lower = upper

    # --- warehouse and result files -------------------------------------------------------

    def _poll_warehouse(self) -> None:
        url = self.s.metrics_warehouse_url
        if not url or time.monotonic() < self._next_warehouse:
            return
        self._next_warehouse = time.monotonic() + self.s.metrics_warehouse_poll_s
        try:
            tables = read_watermarks(url)
        except (OSError, ValueError) as exc:
            log.warning("metrics: cannot read the warehouse watermarks: %s", exc)
            with self.state.lock:
                self.state.warehouse_errors += 1
            return
        with self.state.lock:
            self.state.warehouse = tables

    def _poll_files(self) -> None:
        for path, parse, attr in (
            (self.s.metrics_dbt_run_results, parse_dbt_run_results, "dbt"),
            (self.s.metrics_quality_results, parse_quality_results, "quality"),
        ):
            if path is None:
                continue
            try:
                mtime = path.stat().st_mtime
                if self._files.get(path) == mtime:
                    continue
                result = parse(json.loads(path.read_text()))
            except FileNotFoundError:
                continue
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("metrics: cannot read %s: %s", path, exc)
                continue
            self._files[path] = mtime
            with self.state.lock:
                setattr(self.state, attr, result)


def _scalar(conn: psycopg.Connection, query: str) -> float:
    row = conn.execute(query).fetchone()
    assert row is not None
    return float(row[0])


def read_watermarks(url: str, timeout_s: float = 10.0) -> dict[str, WarehouseTable]:
    """``raw.load_watermarks`` through ClickHouse's HTTP interface."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"metrics_warehouse_url must be http(s)://, not {parts.scheme!r}")
    base = urllib.parse.urlunsplit((parts.scheme, parts.netloc, "/", "", ""))
    query = urllib.parse.urlencode({"query": _WATERMARKS})
    request = urllib.request.Request(f"{base}?{query}")
    if parts.username:
        request.add_header("X-ClickHouse-User", urllib.parse.unquote(parts.username))
    if parts.password:
        request.add_header("X-ClickHouse-Key", urllib.parse.unquote(parts.password))
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        body = response.read().decode()
    tables = {}
    for line in body.splitlines():
        if line.strip():
            row = json.loads(line)
            tables[str(row["table_name"])[:64]] = WarehouseTable(
                float(row["watermark"]), float(row["loaded_at"]), float(row["rows_loaded"])
            )
    return tables


def _iso(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


_DBT_STATUSES = ("success", "error", "fail", "skipped", "warn", "pass", "runtime error")


def parse_dbt_run_results(doc: dict[str, Any]) -> RunResult:
    """dbt's ``target/run_results.json`` (its own record of its last invocation)."""
    by_status: dict[str, int] = {}
    for node in doc["results"]:
        status = str(node.get("status", ""))
        status = status if status in _DBT_STATUSES else "other"
        by_status[status.replace(" ", "_")] = by_status.get(status.replace(" ", "_"), 0) + 1
    failed = sum(by_status.get(s, 0) for s in ("error", "fail", "runtime_error"))
    elapsed = doc.get("elapsed_time")
    return RunResult(
        finished_at=_iso(doc["metadata"]["generated_at"]),
        success=failed == 0,
        duration_s=float(elapsed) if isinstance(elapsed, int | float) else None,
        by_status=by_status,
    )


def parse_quality_results(doc: dict[str, Any]) -> RunResult:
    """The file ``central quality run --results-file`` writes (:func:`quality_results`)."""
    failed: dict[str, int] = {str(s)[:64]: 0 for s in doc["suites"]}
    for f in doc["failures"]:
        suite = str(f["suite"])[:64]
        failed[suite] = failed.get(suite, 0) + 1
    return RunResult(
        finished_at=_iso(doc["finished_at"]),
        success=bool(doc["success"]),
        duration_s=float(doc["duration_s"]) if doc.get("duration_s") is not None else None,
        failed_by_suite=failed,
    )


def quality_results(
    success: bool, suites: list[str], failures: list[tuple[str, str]], duration_s: float
) -> dict[str, Any]:
    """The document a quality run leaves for the exporter: when, whether it passed, and which
    expectations failed in which suite (``(suite, expectation)`` pairs)."""
    return {
        "finished_at": datetime.now().astimezone().isoformat(),
        "success": success,
        "duration_s": round(duration_s, 3),
        "suites": suites,
        "failures": [{"suite": s, "expectation": e} for s, e in failures],
    }
