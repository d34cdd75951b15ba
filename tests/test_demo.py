"""``make demo`` runs the secure configuration: a short run of it, checked like a newcomer would
read its output, plus what it leaves behind."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tests.support.processes import PG_ADMIN_DSN

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.services


def run_demo(var: Path, database: str, *args: str) -> subprocess.CompletedProcess[str]:
    """A short demo (seconds, not minutes) in ``var`` and ``database``, dropped afterwards."""
    cmd = [sys.executable, "-m", "central.demo", "--seconds", "8", "--outage-s", "2"]
    cmd += ["--var", str(var), "--database", database, *args]
    env = {**os.environ, "EIOT_SEED_CSV": str(REPO / "tests" / "support" / "seed_sample.csv")}
    try:
        return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    finally:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f"drop database if exists {database} with (force)")
            for login in (f"{database}_ingest", f"{database}_loader"):
                admin.execute(f"drop role if exists {login}")


def test_a_short_demo_on_the_secure_path(tmp_path: Path) -> None:
    var = tmp_path / "demo"
    done = run_demo(
        var, "eiot_demo_test", "--meters", "40", "--days", "1", "--garbled-share", "0.02",
        "--no-warehouse",
    )  # fmt: skip
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "nothing lost, nothing doubled" in out
    # the garbage some meters sent reached central as quarantine, each with its reason
    quarantined = re.search(r"input quarantined, by reason: (.*)", out)
    assert quarantined and {"invalid", "ts_in_future"} <= {
        kind.rsplit(" ", 1)[0] for kind in quarantined.group(1).split(", ")
    }, out
    assert "services log in as eiot_demo_test_ingest, eiot_demo_test_loader" in out
    conf = (var / "broker" / "mosquitto.conf").read_text().splitlines()
    assert {"allow_anonymous false", "require_certificate true"} <= set(conf)
    # every part ran on its production profile, which refuses anything less than the above
    for log in ("ingest.log", "gw-01.log", "gw-02.log", "gw-seed.log"):
        assert "Traceback" not in (var / log).read_text(), log
    for secret in (var / "secrets").iterdir():
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600, secret
    assert stat.S_IMODE((var / "pki" / "ca.key").stat().st_mode) == 0o600


def test_the_demo_through_airflow(tmp_path: Path) -> None:
    """`make demo AIRFLOW=1`: the central half is one run of warehouse_refresh under a real
    Airflow (.venv-airflow), which publishes the marts the report reads."""
    var = tmp_path / "demo"
    done = run_demo(var, "eiot_demo_af", "--meters", "60", "--days", "2", "--airflow")
    out = done.stdout
    assert done.returncode == 0, out[-5000:] + done.stderr[-5000:]
    assert "nothing lost, nothing doubled" in out
    run = out[out.index("== Airflow: warehouse_refresh") :]
    (state,) = [line for line in run.splitlines() if line.startswith("warehouse_refresh ")]
    assert state.endswith(": success"), run
    for task in ("load", "dbt_build", "quality_gate", "publish"):
        assert f"success          {task}" in run, run
    assert "Inspection list" in run
    assert (var / "airflow" / "airflow.db").exists(), "Airflow's metadata in SQLite in its home"


@pytest.mark.parametrize(
    ("share", "said"),
    [
        ("0.5", "less than or equal to 0.1"),
        ("-0.01", "greater than or equal to 0"),
        ("x", "number"),
    ],
)
def test_a_garbled_share_out_of_range_is_refused_before_anything_starts(
    tmp_path: Path, share: str, said: str
) -> None:
    var = tmp_path / "var"
    done = subprocess.run(
        [sys.executable, "-m", "central.demo", "--garbled-share", share, "--var", str(var)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "argument --garbled-share: Input should be" in done.stderr and said in done.stderr
    assert not var.exists()  # nothing made, nothing started
