#!/usr/bin/env bash
# System packages the project needs on Debian/Ubuntu: Python's venv module, the Mosquitto broker,
# PostgreSQL, libfaketime, systemd-analyze, Prometheus and Alertmanager, headless Chromium,
# socat (tests). Installs only what is missing; needs root or sudo for that.
set -euo pipefail

missing=()
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
# libfaketime: the tests run an agent whose wall clock steps (tests/test_clock.py)
ls /usr/lib/*/faketime/libfaketimeMT.so.1 >/dev/null 2>&1 || missing+=(faketime)
# systemd-analyze: the tests verify the gateway's systemd unit (deploy/gateway/)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
# promtool and a real Prometheus, amtool: the monitoring files' tests (tests/test_monitoring.py)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v amtool >/dev/null 2>&1 || missing+=(prometheus-alertmanager)
# headless Chromium and its WebDriver: the browser tests (screenshots of the Airflow grid)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
# socat: a pseudo-terminal pair is the RS-485 line of the Modbus RTU tests
command -v socat >/dev/null 2>&1 || missing+=(socat)
[ ${#missing[@]} -eq 0 ] && exit 0

echo "installing system packages: ${missing[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
