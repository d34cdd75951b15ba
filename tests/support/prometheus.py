"""A real Prometheus for the tests: its own configuration, data directory and loopback port,
queried through its HTTP API; and the repository's monitoring files it loads."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from central.local_services import free_port
from tests.support.processes import REPO

MONITORING = REPO / "monitoring"
RULES = MONITORING / "prometheus" / "rules" / "eiot.rules.yml"
RULE_TESTS = MONITORING / "prometheus" / "tests" / "eiot.rules.test.yml"
PROMETHEUS_CONFIG = MONITORING / "prometheus" / "prometheus.yml"
ALERTMANAGER_CONFIG = MONITORING / "alertmanager" / "alertmanager.yml"
DASHBOARDS = MONITORING / "grafana" / "dashboards"
GRAFANA_PROVISIONING = MONITORING / "grafana" / "provisioning"
HINT = "install it with scripts/system-deps.sh (Debian package prometheus)"


def tool(name: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    assert path, f"{name} not found: {HINT}"
    return path


def rules_without_for(target: Path) -> Path:
    """The shipped rules with every ``for`` set to 0s (expressions, labels and annotations
    untouched): an end-to-end test cannot wait the production delays."""
    doc = yaml.safe_load(RULES.read_text())
    for group in doc["groups"]:
        group["interval"] = "1s"
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "0s"
    target.write_text(yaml.safe_dump(doc, sort_keys=False))
    return target


class Prometheus:
    def __init__(self, workdir: Path, exporter_port: int, rules: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "prometheus.yml"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": [
                {
                    "job_name": "eiot-central",
                    "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}],
                }
            ],
        }
        self.config.write_text(yaml.safe_dump(config))
        self.log = workdir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 30) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    tool("prometheus"),
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--web.enable-lifecycle",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url("/-/ready"), timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            assert self.proc.poll() is None, f"prometheus exited:\n{self.log.read_text()}"
            time.sleep(0.2)
        raise TimeoutError(f"prometheus not ready:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def url(self, path: str, **params: str) -> str:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        return f"http://127.0.0.1:{self.port}{path}{query}"

    def api(self, path: str, **params: str) -> Any:
        try:
            with urllib.request.urlopen(self.url(path, **params), timeout=10) as r:
                doc = json.loads(r.read())
        except urllib.error.HTTPError as exc:  # a bad query: 400 with Prometheus' reason
            doc = json.loads(exc.read())
        return doc

    def query(self, promql: str) -> list[dict[str, Any]]:
        doc = self.api("/api/v1/query", query=promql)
        assert doc["status"] == "success", f"{promql}: {doc.get('error')}"
        result: list[dict[str, Any]] = doc["data"]["result"]
        return result

    def value(self, promql: str) -> float | None:
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else None

    def alerts(self) -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = self.api("/api/v1/alerts")["data"]["alerts"]
        return alerts

    def firing(self, name: str) -> list[dict[str, str]]:
        return [
            a["labels"]
            for a in self.alerts()
            if a["labels"].get("alertname") == name and a["state"] == "firing"
        ]
