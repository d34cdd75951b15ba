"""Exporter cost: the fleet's status messages through the real path, the exporter watched.

    python -m bench.exporter --gateways 1000 [--minutes 3] [--poll 15] [--scrape-every 5]

Each of ``--gateways`` gateways publishes one ``status.v1`` per ``--period`` (60 s: 1,000 gateways
are 1,000 statuses a minute; retained, QoS 1, as the agent does; a status with buffer figures,
~20 counters and two models), spread evenly over the period, through the local broker
(``EIOT_BROKER_PORT``, plain MQTT) to a real ingest worker
(``central ingest``) that stores them in ``raw.gateway_status`` of a fresh PostgreSQL database;
a real exporter (``central metrics serve``, polling every ``--poll`` seconds) reads them and is
scraped every ``--scrape-every`` seconds over HTTP, as Prometheus would. The first period is a
warm-up (every gateway heard once); the figures are over the rest:

``status_msgs_per_s``: statuses stored per second; ``exporter_cpu_pct``: the exporter's CPU
time over wall time (100 = one core); ``exporter_rss_mb``: its resident memory at the end
(``_peak_mb`` the highest); ``scrape_ms``: the median time of a whole ``GET /metrics``
(``scrape_p95_ms``, ``scrape_bytes``); ``gateways_seen``: gateways in the last scrape;
``ingest_cpu_pct`` for comparison. The last line is a JSON object.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import statistics
import threading
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psutil
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

from bench.results import report
from central.db import migrate
from central.local_services import REPO, free_port, local_services, spawn_python, wait_port
from edge_agent import topics, wire

COUNTERS = (
    "readings_accepted", "readings_acked", "readings_scored", "quarantined", "batches_formed",
    "batches_sent", "batches_acked", "batches_resent", "alerts_published", "alerts_delivered",
    "wire_bytes_sent", "readings_pruned", "readings_duplicate", "readings_conflict",
    "readings_rejected", "readings_refused_full", "acks_ignored", "incarnations", "clock_jumps",
    "intake_resumed",
)  # fmt: skip


def status_payload(gateway_id: str, n: int, now: datetime) -> bytes:
    """The ``n``-th status of a gateway: what an agent sends (``edge_agent/status.py``)."""
    loaded = datetime(2026, 3, 1, tzinfo=UTC)
    model = {"name": "iforest", "version": "2026.03.01", "loaded_at": loaded}
    status = wire.Status.model_validate(
        {
            "gateway_id": gateway_id,
            "state": "online",
            "sent_at": now,
            "agent_version": "0.1.0",
            "buffer": {
                "pending_readings": 40 + n % 7,
                "inflight_batches": 1,
                "total_readings": 250_000 + 48 * n,
                "oldest_pending_ts": now - timedelta(minutes=30),
                "full": False,
                "intake": "open",
                "data_bytes": 60_000_000,
                "budget_bytes": 512 * 2**20,
                "wal_bytes": 4_000_000,
                "disk_free_bytes": 9_000_000_000,
            },
            "last_ack_at": now - timedelta(seconds=20),
            "counters": {name: 1000 + 48 * n + i for i, name in enumerate(COUNTERS)},
            "model": model,
            "models": [model, {**model, "name": "iforest-residential"}],
            "clock_suspect": False,
        }
    )
    return wire.encode_model(status, compress=False)


def publish_statuses(
    port: int, root: str, ids: list[str], run_s: float, period_s: float, stop: threading.Event
) -> int:
    """One status per gateway per period, spread over it; returns how many were sent."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"{root}/bench", protocol=mqtt.MQTTv5
    )
    client.connect("127.0.0.1", port, keepalive=60)
    client.loop_start()
    step = period_s / len(ids)
    sent = 0
    t0 = time.monotonic()
    try:
        while not stop.is_set():
            due = t0 + sent * step
            if due - t0 >= run_s:
                break
            delay = due - time.monotonic()
            if delay > 0:
                stop.wait(delay)
            gw = ids[sent % len(ids)]
            payload = status_payload(gw, sent // len(ids), datetime.now(UTC))
            client.publish(topics.status(root, gw), payload, qos=1, retain=True)
            sent += 1
    finally:
        client.loop_stop()
        client.disconnect()
    return sent


def clear_retained(port: int, root: str, ids: list[str]) -> None:
    """The broker keeps retained statuses: remove the benchmark's."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"{root}/clear", protocol=mqtt.MQTTv5
    )
    client.connect("127.0.0.1", port, keepalive=60)
    client.loop_start()
    infos = [client.publish(topics.status(root, gw), b"", qos=1, retain=True) for gw in ids]
    for info in infos:
        info.wait_for_publish(10)
    client.loop_stop()
    client.disconnect()


def scrape(port: int) -> tuple[float, bytes]:
    t = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        body = r.read()
    return (time.perf_counter() - t) * 1000, body


def cpu_s(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def run(gateways: int, minutes: float, poll_s: float, scrape_every_s: float,
        period_s: float = 60.0, var: Path = REPO / "var" / "bench-exporter",
        ) -> dict[str, Any]:  # fmt: skip
    shutil.rmtree(var, ignore_errors=True)
    var.mkdir(parents=True)
    root = f"eiot-bench/{secrets.token_hex(3)}"
    ids = [f"bench-gw{i:05d}" for i in range(gateways)]
    metrics_port = free_port()
    with local_services() as svc:
        dbname = f"eiot_bench_exporter_{os.getpid()}"
        dsn = svc.fresh_database(dbname)
        migrate(dsn)
        common = {"EIOT_BROKER_PORT": str(svc.broker_port), "EIOT_PG_DSN": dsn,
                  "EIOT_TOPIC_ROOT": root}  # fmt: skip
        ingest = spawn_python(
            ["-m", "central", "--log-level", "WARNING", "ingest"],
            {
                **common,
                "EIOT_WORKER_ID": f"bench-exporter-{os.getpid()}",
                "EIOT_SHARE_GROUP": "",
                "EIOT_SESSION_EXPIRY_S": "60",
                "EIOT_STATE_DIR": str(var / "ingest-state"),
            },  # fmt: skip
            var / "ingest.log",
        )
        exporter = spawn_python(
            ["-m", "central", "metrics", "serve", "--port", str(metrics_port)],
            {**common, "EIOT_METRICS_POLL_S": str(poll_s)},
            var / "exporter.log",
        )
        stop = threading.Event()
        try:
            wait_port(metrics_port, 30)
            time.sleep(1.5)  # the ingest subscribed
            exp_p, ing_p = psutil.Process(exporter.pid), psutil.Process(ingest.pid)
            sent: list[int] = []
            publisher = threading.Thread(
                target=lambda: sent.append(
                    publish_statuses(svc.broker_port, root, ids, minutes * 60, period_s, stop)
                ),
                daemon=True,
            )
            t_start = time.monotonic()
            publisher.start()
            stop.wait(period_s)  # warm-up: every gateway heard once
            t0, exp0, ing0 = time.monotonic(), cpu_s(exp_p), cpu_s(ing_p)
            with psycopg.connect(dsn) as conn:
                rows0 = int(conn.execute("select count(*) from raw.gateway_status").fetchone()[0])  # type: ignore[index]
            scrapes: list[float] = []
            rss: list[float] = []
            body = b""
            while publisher.is_alive():
                ms, body = scrape(metrics_port)
                scrapes.append(ms)
                rss.append(exp_p.memory_info().rss / 2**20)
                publisher.join(scrape_every_s)
            t1, exp1, ing1 = time.monotonic(), cpu_s(exp_p), cpu_s(ing_p)
            time.sleep(1)  # the last commits
            with psycopg.connect(dsn) as conn:
                rows1 = int(conn.execute("select count(*) from raw.gateway_status").fetchone()[0])  # type: ignore[index]
            time.sleep(poll_s + 1)  # the exporter's last poll
            ms, body = scrape(metrics_port)
            scrapes.append(ms)
            rss.append(exp_p.memory_info().rss / 2**20)
        finally:
            stop.set()
            for proc in (exporter, ingest):
                proc.terminate()
                proc.wait(15)
            clear_retained(svc.broker_port, root, ids)
            with psycopg.connect(svc.admin_dsn, autocommit=True) as admin:
                admin.execute(f"drop database if exists {dbname} with (force)")
    text = body.decode()
    seen = sum(1 for line in text.splitlines() if line.startswith("eiot_gateway_up{"))
    series = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
    window = t1 - t0
    return {
        "gateways": gateways,
        "minutes": minutes,
        "period_s": period_s,
        "poll_s": poll_s,
        "status_msgs_sent": sum(sent),
        "status_msgs_per_s": round((rows1 - rows0) / window, 2),
        "exporter_cpu_pct": round(100 * (exp1 - exp0) / window, 2),
        "exporter_rss_mb": round(rss[-1], 1),
        "exporter_rss_peak_mb": round(max(rss), 1),
        "scrape_ms": round(statistics.median(scrapes), 1),
        "scrape_p95_ms": round(sorted(scrapes)[int(0.95 * (len(scrapes) - 1))], 1),
        "scrape_bytes": len(body),
        "series": series,
        "gateways_seen": seen,
        "ingest_cpu_pct": round(100 * (ing1 - ing0) / window, 2),
        "seconds": round(time.monotonic() - t_start, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gateways", type=int, default=1000, help="gateways, one status a minute")
    parser.add_argument("--minutes", type=float, default=3, help="how long (first period: warm-up)")
    parser.add_argument(
        "--period", type=float, default=60, help="seconds between a gateway's statuses"
    )
    parser.add_argument("--poll", type=float, default=15, help="the exporter's metrics_poll_s")
    parser.add_argument("--scrape-every", type=float, default=5, help="seconds between scrapes")
    args = parser.parse_args(argv)
    if args.minutes * 60 <= args.period:
        parser.error("--minutes must be longer than one --period (the first is a warm-up)")
    figures = run(args.gateways, args.minutes, args.poll, args.scrape_every, args.period)
    report("bench.exporter", figures)


if __name__ == "__main__":
    main()
