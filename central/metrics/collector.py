"""The exposition: every metric the exporter serves, built from its state at scrape time.

Names follow Prometheus' conventions: ``eiot_`` prefix, base units in the name (``_seconds``,
``_bytes``, timestamps as ``_timestamp_seconds``), ``_total`` for counters; labels are bounded
(a gateway id, a model name, a reason code: never a meter id).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.registry import Collector

from central.metrics.state import ExporterState
from edge_agent.health import GATEWAY_COUNTERS, GATEWAY_GAUGES, MODEL_INFO, counter_metric

GW = ["gateway_id"]
Family = GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily | InfoMetricFamily


class FleetCollector(Collector):
    def __init__(self, state: ExporterState) -> None:
        self.state = state

    def collect(self) -> Iterator[Family]:
        st = self.state
        with st.lock:
            yield from self._gateways()
            yield from self._ingest()
            yield from self._warehouse()
            yield from self._runs()
            yield from self._self()

    def _gateways(self) -> Iterator[Family]:
        gateways = sorted(self.state.gateways.items())
        for name, doc, attr in GATEWAY_GAUGES:
            g = GaugeMetricFamily(name, doc, labels=GW)
            for gw, view in gateways:
                value = getattr(view, attr)
                if value is not None:
                    g.add_metric([gw], float(value))
            yield g
        for i, key in enumerate(GATEWAY_COUNTERS):
            c = CounterMetricFamily(*counter_metric(key), labels=GW)
            for gw, view in gateways:
                value = view.counters[i]
                if value is not None:
                    c.add_metric([gw], value)
            yield c
        info = InfoMetricFamily(*MODEL_INFO, labels=[*GW, "model", "version"])
        for gw, view in gateways:
            for model, version in view.models:
                info.add_metric([gw, model, version], {})
        yield info
        fleet = GaugeMetricFamily(
            "eiot_fleet_gateways", "Gateways known, by state.", labels=["state"]
        )
        online = sum(1 for _, v in gateways if v.online)
        fleet.add_metric(["online"], online)
        fleet.add_metric(["offline"], len(gateways) - online)
        yield fleet

    def _ingest(self) -> Iterator[Family]:
        st = self.state
        b = CounterMetricFamily(
            "eiot_ingest_batches",
            "Batches in central's ledger, by status (stored, rejected).",
            labels=["status"],
        )
        for status in ("stored", "rejected"):
            b.add_metric([status], st.batches[status])
        yield b
        r = CounterMetricFamily(
            "eiot_ingest_readings",
            "Readings of stored batches, by outcome (inserted, duplicate, conflict, invalid).",
            labels=["outcome"],
        )
        for outcome in ("inserted", "duplicate", "conflict", "invalid"):
            r.add_metric([outcome], st.readings[outcome])
        yield r
        q = CounterMetricFamily(
            "eiot_ingest_quarantined_rows",
            "Rows added to raw.quarantine, by reason code.",
            labels=["reason"],
        )
        for reason, n in sorted(st.quarantined.items()):
            q.add_metric([reason], n)
        yield q
        a = CounterMetricFamily(
            "eiot_alerts", "Alerts stored in raw.alerts, by kind.", labels=["kind"]
        )
        for kind, n in sorted(st.alerts.items()):
            a.add_metric([kind], n)
        yield a
        h = HistogramMetricFamily(
            "eiot_ingest_batch_delivery_seconds",
            "From the gateway freezing a batch (its sent_at) to central committing it.",
        )
        h.add_metric([], st.delivery.cumulative(), st.delivery.total)
        yield h

    def _warehouse(self) -> Iterator[Family]:
        tables = sorted(self.state.warehouse.items())
        w = GaugeMetricFamily(
            "eiot_warehouse_load_watermark_timestamp_seconds",
            "Rows of PostgreSQL raw received before this are in the warehouse.",
            labels=["table"],
        )
        t = GaugeMetricFamily(
            "eiot_warehouse_last_load_timestamp_seconds",
            "When the load last moved this table's watermark.",
            labels=["table"],
        )
        n = GaugeMetricFamily(
            "eiot_warehouse_last_load_rows", "Rows the table's last load read.", labels=["table"]
        )
        for table, v in tables:
            w.add_metric([table], v.watermark)
            t.add_metric([table], v.loaded_at)
            n.add_metric([table], v.rows_loaded)
        yield from (w, t, n)

    def _runs(self) -> Iterator[Family]:
        for kind, what, result in (
            ("dbt", "dbt invocation (target/run_results.json)", self.state.dbt),
            ("quality", "quality gates run (central quality run)", self.state.quality),
        ):
            ts = GaugeMetricFamily(
                f"eiot_{kind}_last_run_timestamp_seconds", f"When the last {what} finished."
            )
            ok = GaugeMetricFamily(
                f"eiot_{kind}_last_run_success", f"1 if the last {what} passed, 0 if it failed."
            )
            dur = GaugeMetricFamily(
                f"eiot_{kind}_last_run_duration_seconds", f"How long the last {what} took."
            )
            if result is not None:
                ts.add_metric([], result.finished_at)
                ok.add_metric([], 1.0 if result.success else 0.0)
                if result.duration_s is not None:
                    dur.add_metric([], result.duration_s)
            yield from (ts, ok, dur)
        nodes = GaugeMetricFamily(
            "eiot_dbt_last_run_nodes",
            "Nodes of the last dbt invocation, by status.",
            labels=["status"],
        )
        if self.state.dbt is not None:
            for status, count in sorted(self.state.dbt.by_status.items()):
                nodes.add_metric([status], count)
        yield nodes
        failed = GaugeMetricFamily(
            "eiot_quality_failed_expectations",
            "Expectations that failed in the last quality run, by suite.",
            labels=["suite"],
        )
        if self.state.quality is not None:
            for suite, count in sorted(self.state.quality.failed_by_suite.items()):
                failed.add_metric([suite], count)
        yield failed

    def _self(self) -> Iterator[Family]:
        st = self.state
        yield CounterMetricFamily(
            "eiot_metrics_polls", "Database polls of the exporter.", value=st.polls
        )
        yield CounterMetricFamily(
            "eiot_metrics_poll_errors",
            "Polls that could not read the database.",
            value=st.poll_errors,
        )
        yield CounterMetricFamily(
            "eiot_metrics_warehouse_errors",
            "Warehouse reads that failed.",
            value=st.warehouse_errors,
        )
        yield CounterMetricFamily(
            "eiot_metrics_gateways_dropped",
            "Statuses of new gateways not kept: metrics_max_gateways reached.",
            value=st.gateways_dropped,
        )
        yield GaugeMetricFamily(
            "eiot_metrics_last_poll_success_timestamp_seconds",
            "When a poll last read the database.",
            value=st.last_poll_ok,
        )
        yield GaugeMetricFamily(
            "eiot_metrics_last_poll_duration_seconds",
            "How long the last poll took.",
            value=st.last_poll_s,
        )
