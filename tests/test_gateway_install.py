"""The gateway install: ``make gateway-bundle`` builds an offline bundle per platform (every
aarch64 and x86_64 wheel checked present by pip's resolver), its ``install.sh`` installs the
x86_64 one into a clean virtualenv with no index at all, and that ``edge-agent`` loads a signed
model and scores without scikit-learn, skl2onnx, pandas or scipy anywhere in its environment,
telling systemd it is ready, alive (watchdog) and stopping. The systemd unit passes
``systemd-analyze verify`` and its sandbox rates "OK" in ``systemd-analyze security``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from central import gateway_bundle
from central.local_services import free_port
from edge_agent import topics
from tests.support.detection import Subscriber, models, normal_history, reading, write_spool
from tests.support.processes import BROKER_PORT
from tests.support.systemd import NotifySocket

pytestmark = pytest.mark.services

HEAVY = (
    "sklearn",
    "skl2onnx",
    "pandas",
    "scipy",
    "pydantic_settings",
    "pymodbus",
    "serial",
    "gurux_dlms",
)
GW = "gw-light"
UNIT = gateway_bundle.DEPLOY / "eiot-agent.service"


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def test_the_systemd_unit_verifies_and_is_sandboxed(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing (Debian: systemd); scripts/system-deps.sh")
    unit = tmp_path / UNIT.name
    # verify wants ExecStart's program to exist: point it at this checkout's agent
    agent = Path(sys.executable).parent / "edge-agent"
    unit.write_text(UNIT.read_text().replace("/opt/eiot/venv/bin/edge-agent", str(agent)))
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert verify.returncode == 0 and verify.stderr.strip() == "", verify.stderr
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--threshold=25", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert security.returncode == 0, security.stdout[-2000:] + security.stderr
    assert "Overall exposure level" in security.stdout and "OK" in security.stdout.splitlines()[-1]


def test_edge_bundle_installs_offline_and_runs_the_agent_with_a_model(
    tmp_path: Path, topic_root: str
) -> None:
    out = tmp_path / "bundles"
    built = subprocess.run(
        [sys.executable, "-m", "central.gateway_bundle", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    print(built.stdout.strip().splitlines()[-2:])
    (bundle,) = [p for p in out.iterdir() if p.is_dir() and p.name.endswith("-x86_64")]
    assert (out / f"{bundle.name}.tar.gz").stat().st_size > 0
    assert any(p.name.endswith("-aarch64.tar.gz") for p in out.iterdir())

    prefix = tmp_path / "opt"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EIOT_", "PYTHON", "PIP_"))}
    env["PIP_NO_INDEX"] = "1"  # the bundle alone: no index, no cache, no network
    env["PIP_NO_CACHE_DIR"] = "1"
    install = subprocess.run(
        ["sh", str(bundle / "install.sh"), "--venv-only", "--prefix", str(prefix)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**env, "PYTHON": sys.executable},
        cwd=tmp_path,
    )
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    venv = prefix / "venv"
    python = venv / "bin" / "python"
    probe = subprocess.run(
        [
            str(python),
            "-c",
            "import importlib.util, json, sys; "
            f"print(json.dumps({{m: importlib.util.find_spec(m) is not None for m in {HEAVY!r}}}))",
        ],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=tmp_path,
    )
    assert json.loads(probe.stdout) == dict.fromkeys(HEAVY, False)
    # the Modbus and DLMS sources and the register maps come with the bundle, on the edge
    # packages alone
    maps = subprocess.run(
        [
            str(python),
            "-c",
            "import edge_agent.sources.modbus, edge_agent.sources.dlms; from "
            "edge_agent.meters.register_map import load_maps; print(' '.join(sorted(load_maps())))",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert maps.returncode == 0, maps.stderr[-2000:]
    assert {"sdm120", "sdm630", "generic-u32-wh"} <= set(maps.stdout.split())

    agent_bin = venv / "bin" / "edge-agent"
    helped = subprocess.run(
        [str(agent_bin), "--help"], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert helped.returncode == 0 and "Gateway agent" in helped.stdout, helped.stderr

    # Run it: a signed model file, a spool of readings (one meter's cover opened), the broker.
    m = models()
    model_file = tmp_path / "model.json"
    model_file.write_text(json.dumps(m.v1))
    spool = tmp_path / "spool"
    readings = normal_history(["m1", "m2", "m3"], 0, 8 * 48)
    readings.append(reading("m1", 8 * 48, flags=["cover_open"]))
    write_spool(spool, "readings", readings)
    db = tmp_path / "buffer.db"
    metrics_port = free_port()
    config = tmp_path / "agent.toml"
    config.write_text(
        "\n".join(
            [
                f'gateway_id = "{GW}"',
                f"broker_port = {BROKER_PORT}",
                f'topic_root = "{topic_root}"',
                f'db_path = "{db}"',
                f'spool_dir = "{spool}"',
                f'model_path = "{model_file}"',
                f'model_public_key = "{m.public_key}"',
                "status_interval_s = 1",
                "session_expiry_s = 60",
                f"local_metrics_port = {metrics_port}",
            ]
        )
        + "\n"
    )
    sub = Subscriber(
        BROKER_PORT, [topics.alerts(topic_root, GW), topics.status(topic_root, GW)]
    ).start()
    notify = NotifySocket(tmp_path / "notify")
    proc = subprocess.Popen(
        [str(agent_bin), "run", "--config", str(config)],
        env={**env, "NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000"},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        sub.wait_for(lambda: bool(sub.payloads("/alerts")), 60, "the tamper alert")
        sub.wait_for(
            lambda: any(s.get("model", {}).get("version") == "v1" for s in sub.payloads("/status")),
            15,
            "status with the model",
        )
        sub.wait_for(
            lambda: notify.messages.count("WATCHDOG=1") >= 3, 10, "watchdog pings (0.5 s apart)"
        )
        # the engineer's view on site, served by the bundle's agent on its packages alone
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
            local = r.read().decode()
        peak = _peak_rss_mb(proc.pid)
        with sqlite3.connect(db) as conn:
            scored = conn.execute(
                "select count(*), count(score), min(model_version), max(model_version) "
                "from readings"
            ).fetchone()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out = proc.communicate(timeout=20)[0].decode(errors="replace")
        except subprocess.TimeoutExpired:
            proc.kill()
            out = proc.communicate()[0].decode(errors="replace")
        sub.stop()
        notify.close()
    assert proc.returncode == 0, out[-3000:]
    said = [m.split("\n")[0] for m in notify.messages]
    assert said[0] == "READY=1" and said[-1] == "STOPPING=1", said
    assert said.count("WATCHDOG=1") >= 3, said
    assert scored == (len(readings), len(readings), "v1", "v1"), out[-3000:]
    assert f'eiot_gateway_up{{gateway_id="{GW}"}} 1.0' in local
    assert f'eiot_gateway_model_info{{gateway_id="{GW}",model="iforest",version="v1"}} 1.0' in local
    alert = sub.payloads("/alerts")[0]
    assert (alert["kind"], alert["meter_id"]) == ("tamper", "m1")
    print(f"edge-agent peak RSS with the model loaded: {peak:.0f} MB")
    assert peak < 300, f"agent peak RSS {peak:.0f} MB"
