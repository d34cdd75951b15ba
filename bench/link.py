"""A gateway's backlog over a real link: a 3G modem, a flapping one, a half-open connection.

    python -m bench.link --profile 3g --meters 1000 --hours 12

The agent runs in a network namespace of its own and reaches the broker only through an
emulated link (``central.netlink``: veths and a netem-like wire, delay, loss, rate per
direction); the secure broker (TLS, client certificates, ACL) and the ingest run in the root
namespace, the ingest with its own PostgreSQL login, as in production.

Profiles: ``lan`` (no shaping), ``3g`` (150 ms each way, so ≈300 ms round trip; 1 % of the
frames lost each way; 384 kbit/s each way), ``flapping`` (3g, and the gateway's interface down
for --flap-down-s every --flap-period-s, the first time --flap-first-s after the agent's first
publish: while its batches are on the way).

1. Fill the gateway's buffer from the simulator: --meters × --hours of 30-minute readings.
2. Drain: start the agent; ``drain_s`` runs from its start to the last ack (``connect_s``: to
   its first publish). ``on_air_bytes_per_reading``: the gateway interface's counters over the
   drain, both ways, IP packets whole (MQTT, TLS records and handshake, TCP headers and
   retransmissions, acks both ways; not the 14-byte Ethernet headers), per reading.
3. Half-open: with the agent connected, every frame is dropped both ways without a word (no RST)
   and a spool file of new readings arrives. ``half_open_detect_s``: until the agent logs that
   its connection is lost (its MQTT keepalive is the only detector: ``keepalive_s``);
   ``broker_detect_s``: until the broker drops the gateway (whole seconds, from its log). The
   link heals --hold-s after the agent noticed; ``resume_s``: from the heal until the new
   readings are acknowledged.
4. Lost and doubled readings: the gateway's buffer against PostgreSQL (as ``bench.e2e``).

The last line is a JSON object (``bench.results``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import secrets
import shutil
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from bench.e2e import check, fill
from bench.results import report
from central.db import migrate
from central.local_services import (
    REPO,
    identity_env,
    local_services,
    provision,
    service_login,
    spawn_python,
)
from central.netlink import Flapping, Link, LinkBroker, unavailable
from central.pki import Pki
from central.roles import INGEST
from edge_agent.settings import AgentSettings

ROOT = "eiot-bench/v1"
GATEWAY = "bench-gw1"
LIVE_START = datetime(2026, 6, 1, tzinfo=UTC)  # the live readings' times: none in the backlog
# The agent: ``python <AGENT_ARGS>`` in the gateway namespace (a module-level value so that an
# experiment can run an instrumented agent through the same bench).
AGENT_ARGS = ["-m", "edge_agent", "--log-level", "INFO", "run"]
LOST_LINE = "connection lost"  # edge_agent.mqtt_link: the keepalive (or a socket error) fired


def wait_for(cond: Callable[[], bool], timeout: float, what: str, poll: float = 0.1) -> float:
    """Poll ``cond`` until true; the ``time.time()`` it became true."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)
    return time.time()


def unacked(db: Path) -> int:
    with contextlib.closing(sqlite3.connect(db, timeout=10)) as conn:
        row = conn.execute("select count(*) from readings where acked_at is null").fetchone()
    return int(row[0])


def first_sent(db: Path) -> float | None:
    with contextlib.closing(sqlite3.connect(db, timeout=10)) as conn:
        row = conn.execute("select min(first_sent_at) from batches").fetchone()
    return None if row[0] is None else float(row[0])


def buffer_figures(db: Path) -> dict[str, Any]:
    with contextlib.closing(sqlite3.connect(db, timeout=10)) as conn:
        counters = dict(conn.execute("select name, value from counters").fetchall())
        first_sent, last_ack = conn.execute(
            "select min(first_sent_at), max(acked_at) from batches"
        ).fetchone()
        live_ack = conn.execute(
            "select max(acked_at) from readings where meter_id like ?", (f"{GATEWAY}-live-%",)
        ).fetchone()[0]
    return {
        "counters": counters,
        "first_sent_at": first_sent,
        "last_ack_at": last_ack,
        "live_ack_at": live_ack,
    }


def feed_live(spool: Path, meters: int, intervals: int) -> int:
    """A spool file of new readings, as a head-end would drop it (written, then renamed)."""
    lines = []
    for m in range(meters):
        for k in range(intervals):
            ts = LIVE_START + timedelta(minutes=30 * (k + 1))
            reading = {"meter_id": f"{GATEWAY}-live-{m:04d}", "kwh": 0.25, "voltage_v": 231.0}
            lines.append(json.dumps({**reading, "ts": ts.strftime("%Y-%m-%dT%H:%M:%SZ")}))
    tmp = spool / "live.jsonl.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    tmp.rename(spool / "live.jsonl")
    return len(lines)


def log_after(path: Path, offset: int, text: str) -> bool:
    with path.open("rb") as f:
        f.seek(offset)
        return text.encode() in f.read()


def broker_dropped_at(log: Path, gateway: str, after: float) -> float | None:
    """When (epoch seconds, whole) the broker's log says it dropped ``gateway`` after
    ``after`` for silence (Mosquitto: "Client … has exceeded timeout")."""
    pattern = re.compile(rf"^(\d+): Client {re.escape(gateway)} has exceeded timeout", re.M)
    times = [int(t) for t in pattern.findall(log.read_text(errors="replace"))]
    later = [t for t in times if t >= int(after)]
    return float(later[0]) if later else None


def run(
    args: argparse.Namespace, var: Path, link: Link, dsn: str, ingest_dsn: str
) -> dict[str, Any]:
    profile = "3g" if args.profile == "flapping" else args.profile
    link.profile(profile)
    db, spool = var / f"{GATEWAY}.db", var / "spool"
    spool.mkdir()
    pki = provision(var / "pki", [GATEWAY])
    broker = LinkBroker(var / "broker", pki, ROOT, link.central_ip)
    broker.start()
    ingest = None
    try:
        ingest = spawn_python(
            ["-m", "central", "ingest"],
            {
                **identity_env(pki, "svc-ingest-1", link.central_ip, broker.port),
                "EIOT_PROFILE": "production",
                "EIOT_PG_DSN": ingest_dsn,
                "EIOT_TOPIC_ROOT": ROOT,
                "EIOT_WORKER_ID": f"link-{link.token}",
                "EIOT_SHARE_GROUP": f"link-{link.token}",
                "EIOT_SESSION_EXPIRY_S": "60",
                "EIOT_STATE_DIR": str(var / "ingest-state"),
                "EIOT_LOG_LEVEL": "INFO",
            },
            var / "ingest.log",
        )
        wait_for(lambda: "share group" in (var / "ingest.log").read_text(), 30, "the ingest")
        time.sleep(1.0)  # subscribed before the first batch
        return forward(args, var, link, broker, pki, db, spool)
    finally:
        if ingest is not None:
            ingest.terminate()
            ingest.wait(15)
        broker.stop()


def forward(
    args: argparse.Namespace,
    var: Path,
    link: Link,
    broker: LinkBroker,
    pki: Pki,
    db: Path,
    spool: Path,
) -> dict[str, Any]:
    keepalive = args.keepalive or AgentSettings.model_fields["keepalive_s"].default
    agent_log = var / f"{GATEWAY}.log"
    env = {
        **identity_env(pki, GATEWAY, link.central_ip, broker.port),
        "EIOT_PROFILE": "production",
        "EIOT_GATEWAY_ID": GATEWAY,
        "EIOT_TIMEZONE": "Africa/Lagos",
        "EIOT_TOPIC_ROOT": ROOT,
        "EIOT_DB_PATH": str(db),
        "EIOT_SPOOL_DIR": str(spool),
        "EIOT_KEEPALIVE_S": str(keepalive),
        # keep acknowledged readings: the check compares the whole buffer with PostgreSQL
        "EIOT_RETENTION_S": str(10 * 365 * 86400),
    }
    before = link.counters()
    started = time.time()
    agent = link.popen(AGENT_ARGS, env, agent_log)
    flapping = None
    try:
        if args.profile == "flapping":
            wait_for(lambda: first_sent(db) is not None, args.timeout_s, "the first publish")
            flapping = Flapping(link, args.flap_period_s, args.flap_down_s, args.flap_first_s)
        drained = wait_for(
            lambda: agent.poll() is not None or unacked(db) == 0,
            args.timeout_s,
            "the backlog to drain",
            poll=0.5,
        )
        if agent.poll() is not None:
            raise RuntimeError("the agent died:\n" + agent_log.read_text()[-3000:])
        used = link.counters() - before
        drain = buffer_figures(db)
        wire = link.stats()
        print(f"drained at {drained - started:.1f} s; the wire: {json.dumps(wire)}")
        outages = flapping.outages if flapping else []
        if flapping:
            flapping.stop()
        half = half_open(args, var, link, broker, db, spool, agent_log)
    finally:
        if flapping:
            flapping.stop()
        agent.terminate()
        agent.wait(20)
    return {
        "keepalive_s": keepalive,
        "started": started,
        "drain": drain,
        "on_air": used,
        "frames_lost": (wire["a_to_b"]["lost"], wire["b_to_a"]["lost"]),
        "outages": outages,
        **half,
    }


def half_open(
    args: argparse.Namespace,
    var: Path,
    link: Link,
    broker: LinkBroker,
    db: Path,
    spool: Path,
    agent_log: Path,
) -> dict[str, Any]:
    """Phase 3 (see the module docstring)."""
    wait_for(lambda: link.established(broker.port) == 1, args.timeout_s, "the agent connected")
    time.sleep(2)  # the last acks' PUBACKs and the status are through: the link is quiet
    offset = agent_log.stat().st_size
    link.blackhole(True)
    cut = time.time()
    live = feed_live(spool, args.live_meters, 4)
    noticed = wait_for(
        lambda: log_after(agent_log, offset, LOST_LINE),
        args.timeout_s,
        "the agent to notice the half-open link",
    )
    print(f"half-open link noticed after {noticed - cut:.1f} s")
    time.sleep(args.hold_s)
    link.blackhole(False)
    healed = time.time()
    wait_for(
        lambda: not (spool / "live.jsonl").exists() and unacked(db) == 0,
        args.timeout_s,
        "the live readings to be acknowledged after the heal",
        poll=0.2,
    )
    live_ack = buffer_figures(db)["live_ack_at"]
    dropped = broker_dropped_at(broker.log_file, GATEWAY, cut)
    return {
        "live_readings": live,
        "half_open_detect_s": noticed - cut,
        "broker_detect_s": None if dropped is None else round(dropped - cut, 1),
        "resume_s": live_ack - healed,
    }


def drop_database(admin_dsn: str, name: str, login: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
        )
        conn.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(login)))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--profile", choices=["3g", "flapping", "lan"], default="3g", help="the link (see above)"
    )
    parser.add_argument("--meters", type=int, default=1000, help="simulated meters")
    parser.add_argument("--hours", type=float, default=12, help="hours of 30-minute readings")
    parser.add_argument(
        "--keepalive", type=int, default=None, help="the agent's keepalive_s (default: its own)"
    )
    parser.add_argument("--flap-period-s", type=float, default=120, help="flapping: period")
    parser.add_argument("--flap-down-s", type=float, default=30, help="flapping: down this long")
    parser.add_argument(
        "--flap-first-s",
        type=float,
        default=1,
        help="flapping: the first outage this long after the agent's first publish",
    )
    parser.add_argument(
        "--hold-s",
        type=float,
        default=10,
        help="keep the link half-open this long after the agent noticed",
    )
    parser.add_argument("--live-meters", type=int, default=50, help="new meters (× 4 readings)")
    parser.add_argument("--timeout-s", type=float, default=1800, help="give up after this long")
    parser.add_argument("--keep", action="store_true", help="keep var/bench-link-<id> (logs)")
    args = parser.parse_args()
    why = unavailable()
    if why:
        parser.exit(2, f"bench.link needs network namespaces: {why}\n")

    token = secrets.token_hex(3)
    var = REPO / "var" / f"bench-link-{token}"
    var.mkdir(parents=True)
    name, login = f"eiot_link_{token}", f"eiot_link_{token}_ingest"
    with local_services(plain_broker=False) as svc:
        try:
            dsn = svc.fresh_database(name)
            migrate(dsn)
            ingest_dsn = service_login(svc.admin_dsn, dsn, login, INGEST)
            t0 = time.perf_counter()
            readings = fill(var / f"{GATEWAY}.db", args.meters, args.hours / 24, 1, 0)
            print(f"buffer filled: {readings:,} readings in {time.perf_counter() - t0:.1f} s")
            with Link() as link:
                print(f"link {link.token}: {args.profile}, gateway {link.gateway_ip}")
                fig = run(args, var, link, dsn, ingest_dsn)
            stored, lost, duplicates = check(dsn, var, [GATEWAY])
        finally:
            drop_database(svc.admin_dsn, name, login)
            if not args.keep:
                shutil.rmtree(var, ignore_errors=True)
    drain, on_air = fig["drain"], fig["on_air"]
    counters = drain["counters"]
    figures = {
        "profile": args.profile,
        "meters": args.meters,
        "hours": args.hours,
        "readings": readings,
        "keepalive_s": fig["keepalive_s"],
        "drain_s": round(drain["last_ack_at"] - fig["started"], 2),
        "connect_s": round(drain["first_sent_at"] - fig["started"], 2),
        "on_air_bytes": on_air.ip_bytes,
        "on_air_bytes_per_reading": round(on_air.ip_bytes / readings, 2),
        "on_air_packets": on_air.packets,
        "frames_lost_up_down": list(fig["frames_lost"]),
        "payload_bytes_per_reading": round(counters.get("wire_bytes_sent", 0) / readings, 2),
        "batches_sent": counters.get("batches_sent", 0),
        "batches_resent": counters.get("batches_resent", 0),
        "outages": len(fig["outages"]),
        "half_open_detect_s": round(fig["half_open_detect_s"], 2),
        "broker_detect_s": fig["broker_detect_s"],
        "resume_s": round(fig["resume_s"], 2),
        "stored": stored,
        "lost": lost,
        "duplicates": duplicates,
    }
    report("bench.link", figures)


if __name__ == "__main__":
    main()
