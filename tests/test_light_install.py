"""The edge stays light: ``pip install <repo>[edge]`` into a clean virtualenv gives a working
``edge-agent`` that loads a signed model and scores, without scikit-learn, skl2onnx, pandas or
scipy anywhere in that environment. (~30 s: pip installs from its cache / the local index.)"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent import topics
from tests.support.detection import Subscriber, models, normal_history, reading, write_spool
from tests.support.processes import BROKER_PORT, REPO

pytestmark = pytest.mark.services

HEAVY = ("sklearn", "skl2onnx", "pandas", "scipy", "pydantic_settings")
GW = "gw-light"


def _copy_project(dest: Path) -> Path:
    """The installable part of the repository, without caches or build leftovers (pip must not
    write egg-info or build/ into the working tree)."""
    dest.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("edge_agent", "central", "ml", "simulator", "bench"):
        shutil.copytree(REPO / package, dest / package, ignore=ignore)
    return dest


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def test_edge_install_runs_the_agent_with_a_model_and_nothing_heavy(
    tmp_path: Path, topic_root: str
) -> None:
    src = _copy_project(tmp_path / "src")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EIOT_", "PYTHON"))}
    pip = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", f"{src}[edge]"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]

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
            ]
        )
        + "\n"
    )
    sub = Subscriber(
        BROKER_PORT, [topics.alerts(topic_root, GW), topics.status(topic_root, GW)]
    ).start()
    proc = subprocess.Popen(
        [str(agent_bin), "run", "--config", str(config)],
        env=env,
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
    assert proc.returncode == 0, out[-3000:]
    assert scored == (len(readings), len(readings), "v1", "v1"), out[-3000:]
    alert = sub.payloads("/alerts")[0]
    assert (alert["kind"], alert["meter_id"]) == ("tamper", "m1")
    print(f"edge-agent peak RSS with the model loaded: {peak:.0f} MB")
    assert peak < 300, f"agent peak RSS {peak:.0f} MB"
