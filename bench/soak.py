"""Soak: many gateways for a long while against the ingest, memory watched, nothing lost.

    python -m bench.soak --gateways 1000 --minutes 10 [--meters 20] [--period 30] [--workers 2]

Each simulated gateway is an MQTT client (MQTT 5, persistent session, its own client id) that
sends one ``readings.v2`` batch every ``--period`` seconds (its ``--meters`` meters, one
30-minute interval each: simulated time runs faster than the wall clock, so ten minutes carry
the traffic of many hours), waits for central's ``ack.v2`` and sends the same bytes again when
none arrives within ``--ack-timeout`` seconds, as the agent does. The gateways are spread over
``--procs`` processes (paho-mqtt, one network thread per client); their first sends are spread
over one period, as after a load-shedding block. The ingest workers are real
(``central ingest``), on the broker at ``EIOT_BROKER_PORT`` (the local one, plain MQTT: the soak
watches the ingest's memory and the exactly-once path; TLS costs the broker CPU, not the
ingest memory) and a fresh PostgreSQL database. The ingest's RSS is sampled every few seconds:
``ingest_rss_start_mb`` after a warm-up of one period, ``_end_mb`` at the last sample, ``_peak_mb``
the highest, ``ingest_rss_curve_mb`` a point per minute. ``lost``: readings sent and not in
PostgreSQL; ``duplicates``: rows stored twice. The last line is a JSON object.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import secrets
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psutil
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bench.results import report
from central.db import migrate
from central.local_services import REPO, local_services, spawn_python
from edge_agent import topics, wire
from edge_agent.fields import make_row

T0 = 1_772_323_200  # 2026-03-01T00:00:00Z: the simulated readings start here


@dataclass(frozen=True)
class Plan:
    port: int
    root: str
    meters: int
    period_s: float
    ack_timeout_s: float
    run_s: float
    drain_s: float


class Gateway:
    """One simulated gateway: its client, its open batches, its counts."""

    def __init__(self, gateway_id: str, plan: Plan, offset_s: float) -> None:
        self.id = gateway_id
        self.plan = plan
        self.next_at = time.monotonic() + offset_s
        self.seq = 0
        self.open: dict[str, tuple[bytes, float]] = {}  # batch id → (payload, last sent)
        self.acked: set[str] = set()
        self._lock = threading.Lock()
        self.sent_readings = 0
        self.resends = 0
        self.topic = topics.readings(plan.root, gateway_id)
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{plan.root}/{gateway_id}",  # unique per run: sessions never collide
            protocol=mqtt.MQTTv5,
        )
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 600
        self.client.connect_async(
            "127.0.0.1", plan.port, keepalive=60, clean_start=False, properties=props
        )
        self.client.loop_start()

    def _on_connect(self, client: mqtt.Client, *_: Any) -> None:
        client.subscribe(topics.ack(self.plan.root, self.id), qos=1)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            ack = wire.Ack.model_validate(wire.decode(bytes(msg.payload)))
        except Exception:  # noqa: BLE001 - counted as missing: the batch is resent
            return
        with self._lock:
            self.acked.add(ack.batch_id)

    def tick(self, now: float, sending: bool) -> None:
        with self._lock:
            for batch_id in self.acked:
                self.open.pop(batch_id, None)
            self.acked.clear()
        for batch_id, (payload, last) in list(self.open.items()):
            if now - last >= self.plan.ack_timeout_s:
                self.client.publish(self.topic, payload, qos=1)
                self.open[batch_id] = (payload, now)
                self.resends += 1
        if sending and now >= self.next_at:
            self.next_at += self.plan.period_s
            self.seq += 1
            batch_id = f"soak{self.id[-4:]}-{self.seq:08d}"
            ts = T0 + 1800 * self.seq
            rows = [
                make_row(meter_id=f"{self.id}-m{j:03d}", ts=ts, interval_s=1800, kwh=0.1 + j / 100)
                for j in range(self.plan.meters)
            ]
            body = wire.readings_payload(
                "readings.v2",
                gateway_id=self.id,
                batch_id=batch_id,
                batch_seq=self.seq,
                sent_at=time.time(),
                rows=rows,
                quarantined=[],
            )
            payload = wire.encode(body)
            self.client.publish(self.topic, payload, qos=1)
            self.open[batch_id] = (payload, now)
            self.sent_readings += len(rows)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def run_gateways(ids: list[str], plan: Plan, out: Any) -> None:
    """One process: these gateways for ``run_s``, then until their batches are acked."""
    step = plan.period_s / max(1, len(ids))
    gateways = [Gateway(gw, plan, i * step) for i, gw in enumerate(ids)]
    end = time.monotonic() + plan.run_s
    while time.monotonic() < end + plan.drain_s:
        now = time.monotonic()
        sending = now < end
        for gw in gateways:
            gw.tick(now, sending)
        if not sending and not any(gw.open for gw in gateways):
            break
        time.sleep(0.05)
    out.put(
        {
            "sent": sum(g.sent_readings for g in gateways),
            "unacked_batches": sum(len(g.open) for g in gateways),
            "resends": sum(g.resends for g in gateways),
        }
    )
    for gw in gateways:
        gw.close()


def sample_rss(pids: list[int], interval_s: float, stop: threading.Event) -> list[float]:
    """Total RSS of the ingest workers (MB), every ``interval_s``."""
    procs = [psutil.Process(p) for p in pids]
    samples: list[float] = []
    while not stop.wait(interval_s):
        total = 0.0
        for p in procs:
            try:
                total += p.memory_info().rss / 2**20
            except psutil.Error:
                pass
        samples.append(round(total, 1))
    return samples


def soak(gateways: int, minutes: float, meters: int, period_s: float, procs: int,
         workers: int, ack_timeout_s: float, var: Path = REPO / "var" / "bench-soak",
         ) -> dict[str, Any]:  # fmt: skip
    shutil.rmtree(var, ignore_errors=True)
    var.mkdir(parents=True)
    root = f"eiot-soak/{secrets.token_hex(3)}"
    with local_services() as svc:
        dsn = svc.fresh_database(f"eiot_soak_{os.getpid()}")
        migrate(dsn)
        ingests = [
            spawn_python(
                ["-m", "central", "ingest"],
                {
                    "EIOT_BROKER_PORT": str(svc.broker_port),
                    "EIOT_PG_DSN": dsn,
                    "EIOT_TOPIC_ROOT": root,
                    "EIOT_WORKER_ID": f"soak-{os.getpid()}-{n}",  # its MQTT session: unique
                    "EIOT_SHARE_GROUP": f"soak-{os.getpid()}",
                    "EIOT_SESSION_EXPIRY_S": "120",
                    "EIOT_STATE_DIR": str(var / "ingest-state"),
                    "EIOT_LOG_LEVEL": "WARNING",
                },
                var / f"ingest-{n}.log",
            )
            for n in range(1, workers + 1)
        ]
        time.sleep(1.5)  # subscribed before the first batch
        plan = Plan(
            port=svc.broker_port,
            root=root,
            meters=meters,
            period_s=period_s,
            ack_timeout_s=ack_timeout_s,
            run_s=minutes * 60,
            drain_s=max(60.0, 3 * ack_timeout_s),
        )
        ids = [f"soak-gw{i:05d}" for i in range(gateways)]
        ctx = mp.get_context("spawn")
        out = ctx.Queue()
        workers_p = [
            ctx.Process(target=run_gateways, args=(ids[k::procs], plan, out)) for k in range(procs)
        ]
        stop = threading.Event()
        interval = max(1.0, min(5.0, plan.run_s / 60))
        curve: list[float] = []
        sampler = threading.Thread(
            target=lambda: curve.extend(sample_rss([i.pid for i in ingests], interval, stop)),
            daemon=True,
        )
        t0 = time.monotonic()
        sampler.start()
        for p in workers_p:
            p.start()
        results = [out.get(timeout=plan.run_s + plan.drain_s + 120) for _ in workers_p]
        for p in workers_p:
            p.join(30)
        seconds = time.monotonic() - t0
        time.sleep(1)  # the last commits
        stop.set()
        sampler.join(10)
        for ingest in ingests:
            ingest.terminate()
            ingest.wait(15)
        with psycopg.connect(dsn) as conn:
            stored, distinct = conn.execute(
                "select count(*), count(distinct (meter_id, ts)) from raw.readings"
            ).fetchone()  # type: ignore[misc]
            quarantined = conn.execute("select count(*) from raw.quarantine").fetchone()[0]  # type: ignore[index]
        with psycopg.connect(svc.admin_dsn, autocommit=True) as admin:
            admin.execute(f"drop database if exists {dsn.rsplit('/', 1)[1]} with (force)")
    sent = sum(r["sent"] for r in results)
    warm = max(1, int(period_s / interval))
    per_minute = max(1, int(60 / interval))
    return {
        "gateways": gateways,
        "minutes": minutes,
        "meters_per_gateway": meters,
        "period_s": period_s,
        "workers": workers,
        "readings": sent,
        "stored": int(stored),
        "lost": sent - int(distinct),
        "duplicates": int(stored) - int(distinct),
        "quarantined": int(quarantined),
        "unacked_batches": sum(r["unacked_batches"] for r in results),
        "resends": sum(r["resends"] for r in results),
        "seconds": round(seconds, 1),
        "ingest_rss_start_mb": curve[min(warm, len(curve) - 1)] if curve else None,
        "ingest_rss_end_mb": curve[-1] if curve else None,
        "ingest_rss_peak_mb": max(curve) if curve else None,
        "ingest_rss_curve_mb": curve[::per_minute],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gateways", type=int, default=1000, help="simulated gateways")
    parser.add_argument("--minutes", type=float, default=10, help="how long they send")
    parser.add_argument("--meters", type=int, default=20, help="meters per gateway")
    parser.add_argument("--period", type=float, default=30, help="seconds between batches")
    parser.add_argument("--procs", type=int, default=4, help="processes the gateways run in")
    parser.add_argument("--workers", type=int, default=2, help="ingest workers")
    parser.add_argument("--ack-timeout", type=float, default=20, help="resend after (s)")
    args = parser.parse_args(argv)
    result = soak(
        args.gateways,
        args.minutes,
        args.meters,
        args.period,
        args.procs,
        args.workers,
        args.ack_timeout,
    )
    report("bench.soak", result)


if __name__ == "__main__":
    main()
