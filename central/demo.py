"""``make demo``: the reading path end to end on one machine, on embedded defaults.

Two gateway agents with a simulated fleet (a few hundred meters over a few days, load-shedding
included, and a few garbled readings that the agents quarantine) forward to one ingest worker;
midway the central site goes down for a while and the agents ride it out on their buffers. At
the end every reading an agent accepted is checked against PostgreSQL, and a summary per
gateway is printed. Exit status 0 only when nothing was lost or doubled.

It runs the secure configuration (docs/security.md), the one production uses: a PKI under
``var/demo/pki`` with a certificate per gateway and service, a private Mosquitto with the
generated secure configuration (TLS, client certificates, per-identity access control), the
agents and the ingest on their production profile, and PostgreSQL logins with random passwords
per role (the ingest inserts into raw only, the warehouse load reads raw only); their DSNs are
kept in ``var/demo/secrets`` (0600).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict

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
from central.roles import INGEST, LOADER

TOPIC_ROOT = "eiot/v1"


def _gateway(gw_index: int) -> str:
    return f"gw-{gw_index + 1:02d}"


def _agent_env(
    secure: dict[str, str], var: Path, gw: str, gw_index: int, a: argparse.Namespace
) -> dict[str, str]:
    return {
        **secure,
        "EIOT_PROFILE": "production",
        "EIOT_GATEWAY_ID": gw,
        # the simulated fleet's meters name their own zones in its registry; this is the rest
        "EIOT_TIMEZONE": "Africa/Lagos",
        "EIOT_TOPIC_ROOT": TOPIC_ROOT,
        "EIOT_DB_PATH": str(var / f"{gw}.db"),
        "EIOT_BATCH_MAX_AGE_S": "1",
        "EIOT_ACK_TIMEOUT_S": "3",
        "EIOT_ACK_TIMEOUT_MAX_S": "6",
        "EIOT_BACKOFF_MAX_S": "2",
        "EIOT_STATUS_INTERVAL_S": "5",
        "EIOT_SIM__METERS": str(a.meters),
        "EIOT_SIM__DAYS": str(a.days),
        "EIOT_SIM__GATEWAYS": str(a.gateways),
        "EIOT_SIM__GATEWAY_INDEX": str(gw_index),
        "EIOT_SIM__SEED": str(a.seed),
        "EIOT_SIM__CHUNK_INTERVALS": "2",
        "EIOT_SIM__INTERVALS_PER_S": f"{a.days * 48 / a.seconds:.3f}",
        # a bad field day: a few meters send garbage, which the agents quarantine with a reason
        "EIOT_SIM__GARBLED_SHARE": str(a.garbled_share),
    }


def _accepted(db: Path) -> tuple[set[tuple[str, int]], dict[str, int]]:
    with sqlite3.connect(db) as conn:
        keys = {(m, t) for m, t in conn.execute("select meter_id, ts from readings")}
        counters = dict(conn.execute("select name, value from counters").fetchall())
    return keys, counters


def _stored_count(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return int(conn.execute("select count(*) from raw.readings").fetchone()[0])  # type: ignore[index]


def run(a: argparse.Namespace) -> int:
    var = a.var
    shutil.rmtree(var, ignore_errors=True)
    var.mkdir(parents=True)
    started = time.monotonic()
    seed = _seed_csv()
    gateways = [_gateway(i) for i in range(a.gateways)] + (["gw-seed"] if seed else [])
    with contextlib.ExitStack() as stack:
        svc = stack.enter_context(local_services(plain_broker=False))
        pki = provision(var / "pki", gateways, workers=1)
        broker = SecureMosquitto(var / "broker", pki.dir, TOPIC_ROOT)
        stack.callback(broker.stop)
        broker.start()
        dsn = svc.fresh_database(a.database)
        migrate(dsn)  # as the owner
        dsns = _logins(svc, dsn, a.database, var / "secrets")
        logins = ", ".join(str(conninfo_to_dict(d)["user"]) for d in dsns.values())
        print(f"PostgreSQL {svc.dsn(a.database)}, services log in as {logins}")
        print(
            f"secure Mosquitto 127.0.0.1:{broker.port}: TLS, a client certificate per gateway "
            "and service, access control per identity"
        )
        print(f"PKI {pki.dir}: {len(pki.active())} identities")
        _write_registry(a, dsn)

        def secure(name: str) -> dict[str, str]:
            return identity_env(pki, name, "127.0.0.1", broker.port)

        ingest_env = {
            **secure("svc-ingest-1"),
            "EIOT_PROFILE": "production",
            "EIOT_PG_DSN": dsns[INGEST],
            "EIOT_TOPIC_ROOT": TOPIC_ROOT,
            "EIOT_WORKER_ID": "1",
            "EIOT_STATE_DIR": str(var / "ingest-state"),
            # Short session: enough to ride out the outage below.
            "EIOT_SESSION_EXPIRY_S": "120",
        }
        ingest = spawn_python(["-m", "central", "ingest"], ingest_env, var / "ingest.log")
        envs = {
            gw: _agent_env(secure(gw), var, gw, i, a) for i, gw in enumerate(gateways[: a.gateways])
        }
        print(
            f"{a.gateways} gateways, {a.meters} simulated meters, {a.days} days of "
            f"30-minute readings, played in about {a.seconds:.0f} s"
        )
        if seed is not None:  # the seed project's dataset through a spool directory
            spool = var / "spool-seed"
            spool.mkdir()
            shutil.copy(seed, spool / seed.name)
            envs["gw-seed"] = {
                **_agent_env(secure("gw-seed"), var, "gw-seed", 0, a),
                "EIOT_SPOOL_DIR": str(spool),
            }
            for key in [k for k in envs["gw-seed"] if k.startswith("EIOT_SIM__")]:
                del envs["gw-seed"][key]
            print(f"gateway gw-seed: the seed dataset ({seed.name}) through its spool directory")
        else:
            print("seed dataset not found (../shared/data/seed-kaggle or EIOT_SEED_CSV): skipped")
        agents = [
            spawn_python(["-m", "edge_agent", "run", "--exit-when-drained"], env, var / f"{gw}.log")
            for gw, env in envs.items()
        ]
        outage_at = started + a.seconds * 0.35
        outage_done = False
        try:
            while any(p.poll() is None for p in agents):
                time.sleep(1)
                now = time.monotonic()
                if not outage_done and now >= outage_at:
                    outage_done = True
                    ingest.send_signal(signal.SIGKILL)
                    ingest.wait()
                    print(
                        f"[{now - started:5.1f}s] central site down (ingest killed) for "
                        f"{a.outage_s:.0f} s: the agents keep buffering"
                    )
                    time.sleep(a.outage_s)
                    ingest = spawn_python(
                        ["-m", "central", "ingest"], ingest_env, var / "ingest.log"
                    )
                    print(f"[{time.monotonic() - started:5.1f}s] central back: backlog draining")
                if time.monotonic() - started > a.seconds * 4 + 60:
                    print("the agents did not drain in time", file=sys.stderr)
                    return 1
            failed = [i for i, p in enumerate(agents) if p.returncode != 0]
            for i in failed:
                tail = (var / f"{gateways[i]}.log").read_text(errors="replace")[-2000:]
                print(
                    f"agent {gateways[i]} failed (exit {agents[i].returncode}):\n{tail}",
                    file=sys.stderr,
                )
            if failed:
                return 1
            print(
                f"[{time.monotonic() - started:5.1f}s] every reading acknowledged; "
                f"{_stored_count(dsn)} readings in PostgreSQL"
            )
        finally:
            for p in [*agents, ingest]:
                if p.poll() is None:
                    p.terminate()
                    p.wait(10)
        ok = _summary(gateways, var, dsn)
        if ok and a.warehouse:
            central_half = _warehouse_airflow if a.airflow else _warehouse
            ok = central_half(dsns[LOADER], var) == 0
    print(f"demo finished in {time.monotonic() - started:.0f} s")
    if ok and a.warehouse:
        print("the marts in dashboards: make dashboards (docs/dashboards.md)")
    return 0 if ok else 1


def _logins(svc: Services, dsn: str, database: str, secrets_dir: Path) -> dict[str, str]:
    """A login with a random password for the ingest and for the warehouse load; their DSNs
    (with the password) are kept in ``secrets_dir`` for whoever wants to look around."""
    secrets_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    dsns = {}
    for role, name in ((INGEST, f"{database}_ingest"), (LOADER, f"{database}_loader")):
        dsns[role] = service_login(svc.admin_dsn, dsn, name, role)
        path = secrets_dir / f"{name}.dsn"
        path.touch(mode=0o600)
        path.write_text(dsns[role] + "\n")
    return dsns


def _write_registry(a: argparse.Namespace, dsn: str) -> None:
    from simulator import Fleet, FleetConfig
    from simulator.registry_db import upsert_registry

    fleet = Fleet(FleetConfig(meters=a.meters, days=a.days, gateways=a.gateways, seed=a.seed))
    counts = upsert_registry(fleet.registry(), dsn)
    print(f"registry: {counts['meters']} meters, {counts['assets']} grid assets")


def _seed_csv() -> Path | None:
    path = Path(
        os.environ.get("EIOT_SEED_CSV")
        or REPO.parent / "shared" / "data" / "seed-kaggle" / "smart_meter_data.csv"
    )
    return path if path.is_file() else None


def _summary(gateways: list[str], var: Path, dsn: str) -> bool:
    with psycopg.connect(dsn) as conn:
        stored = {
            gw: (n, d, q)
            for gw, n, d, q in conn.execute(
                "select gateway_id, sum(inserted), sum(duplicates), sum(quarantined) "
                "from raw.ingest_batches group by gateway_id"
            )
        }
        keys = {
            (m, int(t.timestamp()))
            for m, t in conn.execute("select meter_id, ts from raw.readings")
        }
        outages = conn.execute("select count(*) from raw.readings where supply = 'off'").fetchone()
        reasons = conn.execute(
            "select split_part(reason, ':', 1), count(*) from raw.quarantine group by 1 order by 1"
        ).fetchall()
    print()
    header = (
        f"{'gateway':<8}{'accepted':>10}{'sent':>8}{'resent':>8}{'stored':>10}"
        f"{'dupl.':>8}{'quar.':>8}{'lost':>6}{'KB sent':>9}"
    )
    print(header)
    print("-" * len(header))
    all_ok = True
    for gw in gateways:
        accepted, c = _accepted(var / f"{gw}.db")
        n, dup, quar = stored.get(gw, (0, 0, 0))
        lost = len(accepted - keys)
        all_ok &= lost == 0 and n == len(accepted)
        print(
            f"{gw:<8}{len(accepted):>10}{c.get('batches_sent', 0):>8}"
            f"{c.get('batches_resent', 0):>8}{n:>10}{dup:>8}{quar:>8}{lost:>6}"
            f"{c.get('wire_bytes_sent', 0) / 1024:>9.1f}"
        )
    print(f"\nreadings during load-shedding (supply off): {outages[0] if outages else 0}")
    kinds = ", ".join(f"{kind} {n}" for kind, n in reasons) or "none"
    print(f"input quarantined, by reason: {kinds}")
    print("nothing lost, nothing doubled" if all_ok else "MISMATCH: see the table above")
    return all_ok


def _warehouse_env(dsn: str, var: Path) -> dict[str, str]:
    return {"EIOT_PG_DSN": dsn, "EIOT_CLICKHOUSE_DSN": f"chdb://{var / 'warehouse'}"}


def _warehouse_airflow(dsn: str, var: Path) -> int:
    """The central half through Airflow: one run of ``warehouse_refresh`` (load, dbt build
    through Cosmos, quality gate, publish), then the report."""
    python = REPO / ".venv-airflow" / "bin" / "python"
    if not python.exists():
        print("no .venv-airflow: `make demo AIRFLOW=1` makes it", file=sys.stderr)
        return 1
    print("\n== Airflow: warehouse_refresh (load, dbt build, quality gate, publish)")
    started = time.monotonic()
    launch = ["-m", "central.orchestration.launch", "--home", str(var / "airflow"), "--sqlite"]
    proc = subprocess.run(
        [str(python), *launch, "--run", "warehouse_refresh"],
        env={
            **os.environ,
            **_warehouse_env(dsn, var),
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        },
        cwd=REPO,
    )
    if proc.returncode != 0:
        print(f"warehouse_refresh failed: exit {proc.returncode}", file=sys.stderr)
        return proc.returncode
    print(f"   ({time.monotonic() - started:.0f} s)")
    return _central_steps(
        dsn, var, [("inspection list and worst transformers", ["warehouse", "report"])]
    )


def _warehouse(dsn: str, var: Path) -> int:
    """Load ClickHouse (embedded chDB under var/), dbt build, quality gates, the report."""
    steps = [
        ("load PostgreSQL raw into ClickHouse", ["warehouse", "load"]),
        ("dbt build (staging, intermediate, marts, tests)", ["warehouse", "dbt", "build"]),
        (
            "quality gates (Great Expectations)",
            ["quality", "run", "--docs-dir", str(var / "data-docs")],
        ),
        ("inspection list and worst transformers", ["warehouse", "report"]),
    ]
    return _central_steps(dsn, var, steps)


def _central_steps(dsn: str, var: Path, steps: list[tuple[str, list[str]]]) -> int:
    env = _warehouse_env(dsn, var)
    for title, args in steps:
        print(f"\n== {title}")
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "central", "--log-level", "WARNING", *args],
            env={**os.environ, **env},
            cwd=REPO,
        )
        if proc.returncode != 0:
            print(f"step failed ({' '.join(args)}): exit {proc.returncode}", file=sys.stderr)
            return proc.returncode
        print(f"   ({time.monotonic() - started:.0f} s)")
    return 0


def _identifier(value: str) -> str:
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,40}", value):
        raise argparse.ArgumentTypeError("lower-case letters, digits and _ only")
    return value


def _garbled_share(value: str) -> float:
    """The agents' own bound (``SimSourceSettings.garbled_share``), said before anything starts."""
    from pydantic import ValidationError

    from edge_agent.settings import SimSourceSettings

    try:
        return SimSourceSettings(garbled_share=value).garbled_share
    except ValidationError as exc:
        raise argparse.ArgumentTypeError(exc.errors()[0]["msg"]) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m central.demo",
        description="Run the reading path end to end with simulated gateways and print a summary.",
    )
    parser.add_argument("--meters", type=int, default=300, help="simulated meters (all gateways)")
    parser.add_argument("--days", type=float, default=3, help="days of readings to simulate")
    parser.add_argument("--gateways", type=int, default=2, help="gateway agents to run")
    parser.add_argument("--seconds", type=float, default=30, help="wall time to play the days in")
    parser.add_argument("--outage-s", type=float, default=8, help="how long central is down")
    parser.add_argument("--seed", type=int, default=7, help="simulation seed")
    parser.add_argument(
        "--garbled-share",
        type=_garbled_share,
        default=0.0005,
        help="share of readings the meters garble, which the agents quarantine (0 to 0.1)",
    )
    parser.add_argument(
        "--var", type=Path, default=REPO / "var" / "demo", help="its files (emptied first)"
    )
    parser.add_argument(
        "--database",
        default="eiot_demo",
        type=_identifier,
        help="PostgreSQL database (dropped and made again); its logins are <database>_ingest "
        "and <database>_loader",
    )
    parser.add_argument(
        "--no-warehouse", dest="warehouse", action="store_false", help="stop after the reading path"
    )
    parser.add_argument(
        "--airflow",
        action="store_true",
        help="run the central half through Airflow (warehouse_refresh; needs .venv-airflow)",
    )
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
