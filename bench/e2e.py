"""End to end: simulated fleet → agents → broker → ingest → PostgreSQL, against a naive baseline.

    python -m bench.e2e --meters 1000 --days 2 --gateways 2 [--secure] [--workers N]

Phase 1 fills each gateway's buffer from the simulator (as after an outage: a backlog).
Phase 2 starts the ingest workers and the agents, and times the forward path from the first
publish to the last ack, watching the processes' peak RSS. The agents reach the broker through
a relay that counts the bytes crossing their sockets both ways (``socket_bytes_per_reading``:
MQTT framing, acks and, with ``--secure``, TLS records and handshakes included).
``--secure``: the secure broker (TLS, client certificates, access control), each agent and
worker with its own identity, as ``make demo`` runs.
Phase 3, the baseline: one MQTT message per reading (QoS1) and one INSERT per reading, on a
sample of the same readings.
Readings lost and doubled are counted by comparing the buffers with PostgreSQL.
The last line is a JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import psutil
import psycopg

from bench.results import report
from central.db import migrate
from central.local_services import (
    REPO,
    SecureMosquitto,
    Services,
    identity_env,
    local_services,
    provision,
    service_login,
    spawn_python,
)
from central.netproxy import TcpProxy
from central.pki import Pki
from central.roles import INGEST
from edge_agent.buffer import Buffer
from edge_agent.codec import row_to_wire
from edge_agent.fields import READING_COLUMNS
from edge_agent.settings import SimSourceSettings
from edge_agent.sources import Intake
from edge_agent.sources.sim import SimSource
from edge_agent.validate import Validator

ROOT = "eiot-bench/v1"


def fill(db: Path, meters: int, days: float, gateways: int, index: int) -> int:
    buffer = Buffer(db, cap=10**9)
    source = SimSource(
        SimSourceSettings(
            meters=meters, days=days, gateways=gateways, gateway_index=index, chunk_intervals=8
        ),
        Intake(buffer.readings, buffer.meta, Validator(time.time)),
    )
    while not source.exhausted():
        source.poll(time.time())
    n = buffer.readings.pending
    buffer.close()
    return n


class PeakRss:
    """Peak RSS and CPU seconds (user + system, last seen) of each process, and the machine's
    busy share of all cores over the watch."""

    def __init__(self, pids: list[int]) -> None:
        self.procs = [psutil.Process(p) for p in pids]
        self.peak = {p: 0.0 for p in pids}
        self.cpu_s = {p: 0.0 for p in pids}
        self._machine = psutil.cpu_times()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for p in self.procs:
                try:
                    self.peak[p.pid] = max(self.peak[p.pid], p.memory_info().rss / 2**20)
                    t = p.cpu_times()
                    self.cpu_s[p.pid] = t.user + t.system
                except psutil.Error:
                    pass
            self._stop.wait(0.05)

    def busy_share(self) -> float:
        """The share of all cores busy since the watch began (every process of the machine)."""
        now = psutil.cpu_times()
        total = sum(now) - sum(self._machine)
        idle = (now.idle + getattr(now, "iowait", 0)) - (
            self._machine.idle + getattr(self._machine, "iowait", 0)
        )
        return 1 - idle / total if total > 0 else 0.0

    def stop(self) -> dict[int, float]:
        self._stop.set()
        self._t.join()
        return self.peak


@dataclass
class Broker:
    """Where the agents and the workers connect, and as whom."""

    port: int
    pki: Pki | None = None  # the secure broker: identities from this PKI

    def env(self, name: str, port: int | None = None) -> dict[str, str]:
        port = port or self.port
        if self.pki is None:
            return {"EIOT_BROKER_PORT": str(port)}
        # the production profile refuses anything less than the secure configuration
        return {**identity_env(self.pki, name, "127.0.0.1", port), "EIOT_PROFILE": "production"}


def forward(
    broker: Broker, dsn: str, var: Path, gateways: list[str], workers: int
) -> dict[str, float]:
    relay = TcpProxy("127.0.0.1", broker.port)  # the agents' side: bytes on their sockets
    ingests = [
        spawn_python(
            ["-m", "central", "ingest"],
            {
                **broker.env(f"svc-ingest-{n}"),
                "EIOT_PG_DSN": dsn,
                "EIOT_TOPIC_ROOT": ROOT,
                "EIOT_WORKER_ID": f"bench-{n}",
                "EIOT_SHARE_GROUP": f"bench-{os.getpid()}",
                "EIOT_SESSION_EXPIRY_S": "60",
                "EIOT_STATE_DIR": str(var / "ingest-state"),
                "EIOT_LOG_LEVEL": "WARNING",
            },
            var / f"ingest-{n}.log",
        )
        for n in range(1, workers + 1)
    ]
    time.sleep(1.5)  # subscribed before the first batch
    agents = [
        spawn_python(
            ["-m", "edge_agent", "--log-level", "WARNING", "run", "--exit-when-drained"],
            {
                **broker.env(gw, relay.port),
                "EIOT_TIMEZONE": "Africa/Lagos",
                "EIOT_GATEWAY_ID": gw,
                "EIOT_TOPIC_ROOT": ROOT,
                "EIOT_DB_PATH": str(var / f"{gw}.db"),
                "EIOT_BATCH_MAX_AGE_S": "0.2",
                "EIOT_SESSION_EXPIRY_S": "60",
            },
            var / f"{gw}.log",
        )
        for gw in gateways
    ]
    rss = PeakRss([*[i.pid for i in ingests], *[a.pid for a in agents]])
    for a in agents:
        if a.wait(900) != 0:
            raise RuntimeError((var / "ingest-1.log").read_text()[-2000:])
    peaks = rss.stop()
    busy = rss.busy_share()
    for ingest in ingests:
        ingest.terminate()
        ingest.wait(10)
    relay.close()
    first = last = None
    wire_bytes = 0
    for gw in gateways:
        with sqlite3.connect(var / f"{gw}.db") as conn:
            f, lst = conn.execute(
                "select min(first_sent_at), max(acked_at) from batches"
            ).fetchone()
            wire_bytes += conn.execute(
                "select value from counters where name = 'wire_bytes_sent'"
            ).fetchone()[0]
        first = f if first is None else min(first, f)
        last = lst if last is None else max(last, lst)
    assert first is not None and last is not None
    return {
        "seconds": last - first,
        "wire_bytes": wire_bytes,
        "socket_bytes": relay.bytes_up + relay.bytes_down,
        "agent_peak_rss_mb": max(peaks[a.pid] for a in agents),
        "ingest_peak_rss_mb": max(peaks[i.pid] for i in ingests),
        "agents_cpu_s": sum(rss.cpu_s[a.pid] for a in agents),
        "ingest_cpu_s": sum(rss.cpu_s[i.pid] for i in ingests),
        "machine_busy_share": busy,
    }


def check(dsn: str, var: Path, gateways: list[str]) -> tuple[int, int, int]:
    accepted: set[tuple[str, int]] = set()
    for gw in gateways:
        with sqlite3.connect(var / f"{gw}.db") as conn:
            accepted |= set(conn.execute("select meter_id, ts from readings"))
    with psycopg.connect(dsn) as conn:
        stored = [
            (m, int(t.timestamp()))
            for m, t in conn.execute("select meter_id, ts from raw.readings")
        ]
    lost = len(accepted - set(stored))
    duplicates = len(stored) - len(set(stored))
    return len(stored), lost, duplicates


def baseline(svc: Services, dsn: str, var: Path, gw: str, sample: int) -> dict[str, float]:
    """One JSON message per reading, QoS1; a subscriber doing one INSERT (autocommit) each."""
    with sqlite3.connect(var / f"{gw}.db") as conn:
        cols = ", ".join(READING_COLUMNS)
        rows = conn.execute(
            f"select {cols} from readings order by seq limit ?", (sample,)
        ).fetchall()
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("create table raw.baseline_readings (like raw.readings including all)")
    topic = f"{ROOT}/baseline/{gw}"
    inbox: queue.SimpleQueue[bytes] = queue.SimpleQueue()
    sub = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=f"bench-base-sub-{os.getpid()}",
        protocol=mqtt.MQTTv5,
    )
    sub.on_message = lambda c, u, m: inbox.put(m.payload)
    sub.connect(svc.broker_host, svc.broker_port)
    sub.subscribe(topic, qos=1)
    sub.loop_start()
    pub = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=f"bench-base-pub-{os.getpid()}",
        protocol=mqtt.MQTTv5,
    )
    pub.connect(svc.broker_host, svc.broker_port)
    pub.loop_start()
    time.sleep(0.5)
    proc = psutil.Process()
    rss0 = proc.memory_info().rss / 2**20
    wire_bytes = 0
    t0 = time.perf_counter()

    def insert_all() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for _ in range(len(rows)):
                try:
                    r = json.loads(inbox.get(timeout=20))
                except queue.Empty:
                    return  # the broker dropped messages it could not queue: counted as lost
                conn.execute(
                    "insert into raw.baseline_readings (meter_id, ts, interval_s, kwh,"
                    " register_kwh, voltage_v, gateway_id, batch_id)"
                    " values (%s, %s, %s, %s, %s, %s, %s, 'none')"
                    " on conflict do nothing",
                    (
                        r["meter_id"],
                        r["ts"],
                        r.get("interval_s", 1800),
                        r["kwh"],
                        r.get("register_kwh"),
                        r.get("voltage_v"),
                        gw,
                    ),
                )

    consumer = threading.Thread(target=insert_all)
    consumer.start()
    for row in rows:
        body = json.dumps(row_to_wire(row)).encode()
        wire_bytes += len(body)
        pub.publish(topic, body, qos=1)
    consumer.join()
    seconds = time.perf_counter() - t0
    rss = proc.memory_info().rss / 2**20 - rss0
    pub.loop_stop()
    sub.loop_stop()
    with psycopg.connect(dsn) as conn:
        stored = conn.execute("select count(*) from raw.baseline_readings").fetchone()[0]  # type: ignore[index]
    return {
        "readings": len(rows),
        "stored": stored,
        "lost": len(rows) - stored,
        "readings_per_s": round(len(rows) / seconds),
        "wire_bytes_per_reading": round(wire_bytes / len(rows), 1),
        "process_rss_growth_mb": round(rss, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--meters", type=int, default=1000, help="simulated meters in all")
    parser.add_argument("--days", type=float, default=2, help="days of 30-minute readings")
    parser.add_argument("--gateways", type=int, default=1, help="gateway agents")
    parser.add_argument(
        "--baseline-sample",
        type=int,
        default=20_000,
        help="readings pushed through the naive baseline (0: skip it)",
    )
    parser.add_argument("--secure", action="store_true", help="TLS, identities, access control")
    parser.add_argument("--workers", type=int, default=1, help="ingest workers (shared group)")
    args = parser.parse_args()
    var = REPO / "var" / "bench-e2e"
    import shutil

    shutil.rmtree(var, ignore_errors=True)
    var.mkdir(parents=True)
    gateways = [f"bench-gw{i + 1}" for i in range(args.gateways)]
    with local_services(plain_broker=not args.secure) as svc:
        dsn = svc.fresh_database("eiot_bench")
        migrate(dsn)
        t0 = time.perf_counter()
        readings = sum(
            fill(var / f"{gw}.db", args.meters, args.days, args.gateways, i)
            for i, gw in enumerate(gateways)
        )
        print(f"buffers filled: {readings:,} readings in {time.perf_counter() - t0:.1f} s")
        with contextlib.ExitStack() as stack:
            broker, ingest_dsn = Broker(svc.broker_port), dsn
            if args.secure:
                pki = provision(var / "pki", gateways, workers=args.workers)
                secure = SecureMosquitto(var / "broker", pki.dir, ROOT)
                secure.start()
                stack.callback(secure.stop)
                broker = Broker(secure.port, pki)
                # the ingest's own login (insert into raw, nothing else), not the owner
                ingest_dsn = service_login(svc.admin_dsn, dsn, "eiot_bench_ingest", INGEST)
            fwd = forward(broker, ingest_dsn, var, gateways, args.workers)
        stored, lost, duplicates = check(dsn, var, gateways)
        rate = readings / fwd["seconds"]
        print(
            f"forwarded {readings:,} readings in {fwd['seconds']:.2f} s: {rate:,.0f} readings/s; "
            f"{fwd['wire_bytes'] / readings:.1f} bytes/reading on the wire"
        )
        print(
            f"{fwd['socket_bytes'] / readings:.1f} bytes/reading on the agents' sockets "
            f"({'TLS' if args.secure else 'plain'}, both ways)"
        )
        print(
            f"peak RSS: agent {fwd['agent_peak_rss_mb']:.0f} MB, "
            f"ingest {fwd['ingest_peak_rss_mb']:.0f} MB; lost {lost}, doubled {duplicates}"
        )
        base: dict[str, float] = {}
        if args.baseline_sample and not args.secure:  # the baseline needs an open broker
            base = baseline(svc, dsn, var, gateways[0], min(args.baseline_sample, readings))
            print(
                f"baseline (one message and one INSERT per reading, {base['readings']:,} "
                f"readings): {base['readings_per_s']:,} readings/s, "
                f"{base['wire_bytes_per_reading']} bytes/reading"
            )
    report(
        "bench.e2e",
        {
            "meters": args.meters,
            "days": args.days,
            "gateways": args.gateways,
            "secure": args.secure,
            "workers": args.workers,
            "readings": readings,
            "stored": stored,
            "lost": lost,
            "duplicates": duplicates,
            "readings_per_s": round(rate),
            "seconds": round(fwd["seconds"], 3),
            "wire_bytes_per_reading": round(fwd["wire_bytes"] / readings, 2),
            "socket_bytes_per_reading": round(fwd["socket_bytes"] / readings, 2),
            "agent_peak_rss_mb": round(fwd["agent_peak_rss_mb"], 1),
            "ingest_peak_rss_mb": round(fwd["ingest_peak_rss_mb"], 1),
            # where the time goes: CPU seconds of the agents and the workers over the whole
            # forward phase (start-up included), and the machine's busy share meanwhile
            "agents_cpu_s": round(fwd["agents_cpu_s"], 2),
            "ingest_cpu_s": round(fwd["ingest_cpu_s"], 2),
            "machine_busy_share": round(fwd["machine_busy_share"], 2),
            **({"baseline": base} if base else {}),
        },
    )


if __name__ == "__main__":
    main()
