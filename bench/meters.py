"""Meters read by the agent itself, end to end: simulated meters → agent (polling, registers to
intervals, scoring with a signed model) → broker → ingest → PostgreSQL.

    python -m bench.meters --protocol modbus --meters 100 [--buses 4] [--intervals 12]
    python -m bench.meters --protocol dlms --meters 20 [--intervals 12]

Modbus: SDM630 meters on pymodbus servers (``--buses`` TCP endpoints). DLMS/COSEM: the project's
test meter (``simulator.dlms_meter``), one TCP port per meter, each with two days of 15-minute
load profile in memory; the agent's first read of each meter catches up a day of it
(``catch_up_s_*``: how long that read took, per meter).

The meters count energy, and the agent polls, on one fast clock (``--speed`` polling seconds per
real second, readings stamped in the past: ``bench.fast_agent``); the rest of the agent runs in
real time. The agent runs in the gateway's light venv (``bench.scoring.edge_python``) with a
signed model loaded. ``poll_cycle_s`` is the longest time the agent took to read every meter at
one boundary (from its log); ``lost`` counts readings the agent accepted that PostgreSQL does not
hold, ``duplicates`` keys PostgreSQL holds twice. The last line is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import psutil
import psycopg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.results import report
from bench.scoring import edge_python, features
from central.db import migrate
from central.local_services import REPO, local_services, spawn_python
from ml.publish import message_from_trained, public_key_b64
from ml.train import train

ROOT = "eiot-bench-meters/v1"
GATEWAY = "bench-meters"
CYCLE = re.compile(r"(?:modbus|dlms) boundary (\d+): poll cycle ([0-9.]+) s")
CATCH_UP = re.compile(r"dlms meter \S+: (\d+) profile entries in ([0-9.]+) s")


def signed_model(work: Path) -> str:
    """A model trained on synthetic meters, signed; its file in ``work``; returns the key."""
    x, y, _ = features(60, 14, seed=1)
    key = Ed25519PrivateKey.generate()
    message = message_from_trained(
        train(x, labels=y), name="iforest", version="bench-1", private_key=key
    )
    (work / "model.json").write_text(json.dumps(message))
    return public_key_b64(key)


def agent_config(work: Path, args: argparse.Namespace, port: int, public_key: str) -> Path:
    lines = [
        f'gateway_id = "{GATEWAY}"',
        f"broker_port = {port}",
        f'topic_root = "{ROOT}"',
        f'db_path = "{work / "buffer.db"}"',
        f'model_path = "{work / "model.json"}"',
        f'model_public_key = "{public_key}"',
        'timezone = "Africa/Lagos"',
        "batch_max_age_s = 1.0",
    ]
    lines += modbus_lines(args) if args.protocol == "modbus" else dlms_lines(args)
    path = work / "agent.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def modbus_lines(args: argparse.Namespace) -> list[str]:
    per_bus = args.meters // args.buses
    lines = [
        "",
        "[modbus]",
        f"interval_s = {args.interval_s}",
        # the polling clock runs --speed times faster: the window is in its seconds
        f"poll_window_s = {max(60, int(args.speed * 2))}",
    ]
    for b in range(args.buses):
        lines += ["", "[[modbus.buses]]", f'name = "tcp{b}"', 'kind = "tcp"']
        lines += ['host = "127.0.0.1"', f"port = {args.port + b}", "timeout_s = 1.0"]
        for unit in range(1, per_bus + 1):
            lines += ["[[modbus.buses.meters]]", f'meter_id = "bus{b}-m{unit:03d}"']
            lines += [f"unit = {unit}", f'model = "{args.model}"']
    return lines


def dlms_lines(args: argparse.Namespace) -> list[str]:
    lines = ["", "[dlms]", f"interval_s = {args.interval_s}", "read_delay_s = 30"]
    lines += ["catch_up_days = 1", "workers = 1"]
    for i in range(args.meters):
        lines += ["", "[[dlms.meters]]", f'meter_id = "dlms-{i:03d}"', 'host = "127.0.0.1"']
        lines += [f"port = {args.port + i}"]
    return lines


def peer_command(args: argparse.Namespace, clocks: list[str]) -> list[str]:
    """The simulated meters: ``--meters`` in all, from ``--port`` on."""
    if args.protocol == "modbus":
        per_bus = str(args.meters // args.buses)
        return ["-m", "simulator.modbus_meters", "--meters", per_bus, "--buses", str(args.buses),
                "--port", str(args.port), "--model", args.model, *clocks]  # fmt: skip
    return ["-m", "simulator.dlms_meter", "--meters", str(args.meters), "--port", str(args.port),
            "--memory-days", "2", "--history-days", "2", *clocks]  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench.meters",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--protocol", choices=["modbus", "dlms"], default="modbus")
    p.add_argument("--meters", type=int, default=100, help="meters in all (split over buses)")
    p.add_argument("--buses", type=int, default=4, help="Modbus TCP endpoints")
    p.add_argument("--model", default="sdm630", help="register map of the Modbus meters")
    p.add_argument("--interval-s", type=int, default=900, help="reading interval")
    p.add_argument("--intervals", type=int, default=12, help="boundaries polled")
    p.add_argument("--speed", type=float, default=150.0, help="polling seconds per real second")
    p.add_argument("--port", type=int, default=15020, help="first TCP port of the meters")
    args = p.parse_args(argv)
    if args.protocol == "modbus" and (
        args.meters % args.buses or not 1 <= args.meters // args.buses <= 247
    ):
        p.error("--meters must split evenly over --buses, at most 247 per bus")
    work = REPO / "var" / "bench-meters"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    public_key = signed_model(work)
    python = edge_python()
    with local_services() as svc:
        dsn = svc.fresh_database("eiot_bench_meters")
        migrate(dsn)
        # a clock that reaches the first boundary in a second and stays in the past throughout
        interval = args.interval_s
        t0 = time.time()
        epoch = (t0 - 2 * 86400 - args.intervals * interval) // interval * interval - args.speed
        clocks = ["--epoch", str(epoch), "--t0", str(t0), "--speed", str(args.speed)]
        procs: list[subprocess.Popen[bytes]] = []
        try:
            peer = spawn_python(
                peer_command(args, clocks),
                {},
                work / "meters.log",
            )
            procs.append(peer)
            _wait_for(lambda: "serving" in (work / "meters.log").read_text(), 30, "meters")
            ingest = spawn_python(
                ["-m", "central", "ingest"],
                {
                    "EIOT_BROKER_PORT": str(svc.broker_port),
                    "EIOT_PG_DSN": dsn,
                    "EIOT_TOPIC_ROOT": ROOT,
                    "EIOT_WORKER_ID": f"bench-meters-{os.getpid()}",
                    "EIOT_SESSION_EXPIRY_S": "60",
                    "EIOT_STATE_DIR": str(work / "ingest-state"),
                },
                work / "ingest.log",
            )
            procs.append(ingest)
            _wait_for(lambda: "subscribed to" in (work / "ingest.log").read_text(), 60, "ingest")
            config = agent_config(work, args, svc.broker_port, public_key)
            env = {k: v for k, v in os.environ.items() if not k.startswith("EIOT_")}
            env["PYTHONPATH"] = str(REPO)
            with (work / "agent.log").open("ab") as log:
                agent = subprocess.Popen(
                    [python, "-m", "bench.fast_agent", "--config", str(config), *clocks],
                    env=env,
                    cwd=work,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            procs.append(agent)
            last_boundary = epoch + args.speed + args.intervals * interval
            seconds = (last_boundary - epoch) / args.speed
            print(
                f"{args.meters} meters, {args.intervals} boundaries of {interval} s: "
                f"~{seconds:.0f} s at speed {args.speed:g}",
                flush=True,
            )
            peak = 0.0
            proc = psutil.Process(agent.pid)
            deadline = time.monotonic() + seconds + 120
            while time.monotonic() < deadline and agent.poll() is None:
                time.sleep(0.5)
                peak = max(peak, proc.memory_info().rss / 2**20)
                done = _boundaries(work) >= args.intervals
                if done and _pending(work) == 0:
                    break
            hwm = _vm_hwm(agent.pid)
        finally:
            for proc_ in reversed(procs):
                if proc_.poll() is None:
                    proc_.send_signal(signal.SIGTERM)
                    try:
                        proc_.wait(20)
                    except subprocess.TimeoutExpired:
                        proc_.kill()
        log_text = (work / "agent.log").read_text()
        cycles = [float(c) for _, c in CYCLE.findall(log_text)]
        catch_up = [(int(n), float(t)) for n, t in CATCH_UP.findall(log_text)]
        with sqlite3.connect(work / "buffer.db") as conn:
            accepted = set(conn.execute("select meter_id, ts from readings"))
            counters = dict(conn.execute("select name, value from counters"))
            failed = counters.get("modbus_polls_failed", 0) + counters.get("dlms_reads_failed", 0)
            quarantined = conn.execute("select count(*) from quarantine").fetchone()[0]
        with psycopg.connect(dsn) as conn:
            stored = [
                (m, int(t.timestamp()))
                for m, t in conn.execute("select meter_id, ts from raw.readings")
            ]
    if len(cycles) < args.intervals:
        raise SystemExit(
            f"only {len(cycles)} of {args.intervals} boundaries polled:\n"
            + (work / "agent.log").read_text()[-3000:]
        )
    lost = len(accepted - set(stored))
    figures = {
        "protocol": args.protocol,
        "meters": args.meters,
        **({"buses": args.buses, "model": args.model} if args.protocol == "modbus" else {}),
        "interval_s": interval,
        "boundaries": len(cycles),
        "poll_cycle_s": round(max(cycles), 3),
        "poll_cycle_p50_s": round(sorted(cycles)[len(cycles) // 2], 3),
        "readings": len(accepted),
        "stored": len(stored),
        "lost": lost,
        "duplicates": len(stored) - len(set(stored)),
        "polls_failed": failed,
        "quarantined": quarantined,
        "agent_peak_rss_mb": round(max(peak, hwm), 1),
    }
    if args.protocol == "modbus":
        figures["readings_expected"] = args.meters * (len(cycles) - 1)
    else:  # the first read of each meter: a day of its profile
        first = catch_up[: args.meters]
        times = sorted(t for _, t in first) or [0.0]
        figures["catch_up_entries_per_meter"] = min((n for n, _ in first), default=0)
        figures["catch_up_s_p50"] = round(times[len(times) // 2], 3)
        figures["catch_up_s_max"] = round(times[-1], 3)
    print(
        f"poll cycle {figures['poll_cycle_s']} s (max), {figures['readings']} readings, "
        f"{figures['stored']} stored, lost {lost}; agent peak RSS {figures['agent_peak_rss_mb']} MB"
    )
    report("bench.meters", figures, argv)


def _wait_for(cond, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} did not start")
        time.sleep(0.2)


def _boundaries(work: Path) -> int:
    return len(CYCLE.findall((work / "agent.log").read_text()))


def _pending(work: Path) -> int:
    try:
        with sqlite3.connect(f"file:{work / 'buffer.db'}?mode=ro", uri=True, timeout=5) as conn:
            return int(
                conn.execute("select count(*) from readings where acked_at is null").fetchone()[0]
            )
    except sqlite3.Error:
        return -1


def _vm_hwm(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


if __name__ == "__main__":
    main()
