"""The operator's path through ``central pki``, ``central broker`` and ``central db login``:
the commands docs/security.md gives, run as a field engineer or data engineer would."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from central.broker import INSTALLED, INSTALLED_OPTIONS, mosquitto_conf
from central.local_services import free_port, mosquitto_binary, wait_port
from central.pki import Pki
from simulator.raw_db import ADMIN_DSN, scratch_database
from tests.support.secure import connect

REPO = Path(__file__).resolve().parents[1]
NOT_AUTHORIZED = 0x87


def central(*args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "central", *args],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_the_shipped_secure_config_is_the_generated_one() -> None:
    shipped = (REPO / "mosquitto" / "secure.conf").read_text()
    assert shipped == mosquitto_conf(INSTALLED, **INSTALLED_OPTIONS), (
        "mosquitto/secure.conf is out of date: python -m central broker config --print "
        "--dir /etc/mosquitto/eiot --state-dir /var/lib/mosquitto/eiot --broker-name broker "
        "--user mosquitto --log-dest syslog > mosquitto/secure.conf"
    )
    for line in ("allow_anonymous false", "require_certificate true", "listener 8883 0.0.0.0"):
        assert line in shipped.splitlines()


@pytest.fixture
def broker_from_cli(tmp_path: Path, topic_root: str) -> Iterator[tuple[Pki, Path, int]]:
    """A CA, a broker certificate, two gateways and the admin, made with the CLI; a Mosquitto
    started with the configuration ``central broker config`` wrote."""
    pki_dir, state = tmp_path / "pki", tmp_path / "broker"
    d = ("--dir", str(pki_dir))
    central("pki", "init", *d)
    central("pki", "issue", "localhost", "--role", "broker", "--host", "127.0.0.1", *d)
    for name, role in (("gw-x", "gateway"), ("gw-y", "gateway"), ("svc-admin", "admin")):
        central("pki", "issue", name, "--role", role, *d)
    port = free_port()
    options = ["--port", str(port), "--bind", "127.0.0.1", "--topic-root", topic_root]
    options += ["--state-dir", str(state), "--log-dest", f"file {state}/mosquitto.log"]
    if os.geteuid() == 0:
        options += ["--user", "root"]
    central("broker", "config", *d, *options)
    proc = subprocess.Popen([mosquitto_binary(), "-c", str(state / "mosquitto.conf")])
    try:
        wait_port(port)
        yield Pki(pki_dir), state, port
    finally:
        proc.kill()
        proc.wait(10)


@pytest.mark.services
def test_add_and_revoke_a_gateway_with_the_cli(
    broker_from_cli: tuple[Pki, Path, int], topic_root: str
) -> None:
    pki, _, port = broker_from_cli
    d = ("--dir", str(pki.dir))
    x = connect(pki, "gw-x", port)
    assert x.connack == 0
    assert x.subscribe(f"{topic_root}/gw/gw-x/ack") == 1

    # A gateway added while the broker runs: its certificate lets it connect, but the broker
    # gives it nothing (deny by default) until `broker sync` creates its client and role.
    central("pki", "issue", "gw-new", "--role", "gateway", *d)
    early = connect(pki, "gw-new", port)
    assert early.subscribe(f"{topic_root}/gw/gw-new/ack") == NOT_AUTHORIZED
    assert early.publish(f"{topic_root}/gw/gw-new/readings", b"{}") == NOT_AUTHORIZED
    early.close()
    sync = ("broker", "sync", "--port", str(port), "--topic-root", topic_root, *d)
    dry = central(
        "broker", "sync", "--port", str(port), "--dry-run", "--topic-root", topic_root, *d
    )
    assert "createClient gw-new" in dry.stdout and "nothing sent" in dry.stdout
    central(*sync)
    new = connect(pki, "gw-new", port)
    assert new.connack == 0
    assert new.subscribe(f"{topic_root}/gw/gw-new/ack") == 1
    assert new.subscribe(f"{topic_root}/gw/gw-x/ack") == NOT_AUTHORIZED
    new.close()
    again = central(*sync)
    assert "in line with the PKI" in again.stdout

    # A stolen gateway: revoked, then synced: the broker drops it at once.
    out = central("pki", "revoke", "gw-x", *d).stdout
    assert "revoked 1 certificate(s) of gw-x" in out
    central(*sync)
    x.wait(lambda: bool(x.disconnects), what="gw-x disconnected")
    x.close()
    listed = central("pki", "list", *d).stdout
    assert "gw-new" in listed and "gw-x" not in listed
    assert "gw-x" in central("pki", "list", "--all", *d).stdout


def test_the_pki_cli_refuses_names_that_lie_about_their_role(tmp_path: Path) -> None:
    d = ("--dir", str(tmp_path / "pki"))
    central("pki", "issue", "gw-1", "--role", "gateway", *d, check=False)  # no CA yet
    assert (
        "pki init" in central("pki", "issue", "gw-1", "--role", "gateway", *d, check=False).stderr
    )
    central("pki", "init", *d)
    for name, role in (
        ("svc-ingest-1", "gateway"),  # a gateway that looks like a service
        ("gw-1", "ingest"),  # a service that looks like a gateway
        ("svc-admin2", "admin"),
        ("gw/+/#", "gateway"),
    ):
        done = central("pki", "issue", name, "--role", role, *d, check=False)
        assert done.returncode == 2 and "refused" in done.stderr, (name, role)
    assert central("pki", "revoke", "gw-1", *d, check=False).returncode == 2
    # rotation: a second certificate, then the older one revoked
    central("pki", "issue", "gw-1", "--role", "gateway", *d)
    central("pki", "issue", "gw-1", "--role", "gateway", *d)
    assert "revoked 1 certificate" in central("pki", "revoke", "gw-1", "--older", *d).stdout
    pki = Pki(tmp_path / "pki")
    assert [i.name for i in pki.active()] == ["gw-1"]
    assert oct((tmp_path / "pki" / "gw-1.key").stat().st_mode & 0o777) == "0o600"
    # provisioning scripts (docker/provision.sh) run again: the live certificate stays
    key = (tmp_path / "pki" / "gw-1.key").read_bytes()
    kept = central("pki", "issue", "gw-1", "--role", "gateway", "--if-missing", *d)
    assert "kept the live certificate" in kept.stdout
    assert (tmp_path / "pki" / "gw-1.key").read_bytes() == key
    central("pki", "issue", "gw-2", "--role", "gateway", "--if-missing", *d)
    assert sorted(i.name for i in pki.active()) == ["gw-1", "gw-2"]


@pytest.mark.services
def test_db_login_makes_a_member_of_one_role(tmp_path: Path) -> None:
    admin = ADMIN_DSN
    name = f"eiot_test_cli_{os.getpid()}"
    secret = tmp_path / "password"
    secret.write_text("s3cret-from-a-file\n")
    with scratch_database("cli_login"):  # its migration makes the group roles if missing
        pass
    try:
        for role in ("eiot_ingest", "eiot_loader"):  # run twice: the second moves it
            out = central(
                "db",
                "login",
                "--name",
                name,
                "--role",
                role,
                "--password-file",
                str(secret),
                EIOT_ADMIN_DSN=admin,
            ).stdout
            assert "s3cret" not in out and f"member of {role}" in out
        with psycopg.connect(admin) as conn:
            groups = conn.execute(
                "select g.rolname from pg_auth_members m join pg_roles g on g.oid = m.roleid"
                " join pg_roles u on u.oid = m.member where u.rolname = %s",
                (name,),
            ).fetchall()
            stored = conn.execute(
                "select rolpassword from pg_authid where rolname = %s", (name,)
            ).fetchone()
        assert groups == [("eiot_loader",)]
        assert stored is not None and str(stored[0]).startswith("SCRAM-SHA-256$")
        refused = central(
            "db",
            "login",
            "--name",
            "postgres",
            "--role",
            "eiot_ingest",
            "--password-file",
            str(secret),
            EIOT_ADMIN_DSN=admin,
            check=False,
        )
        assert refused.returncode == 2 and "superuser" in refused.stderr
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"drop role if exists {name}")
