#!/usr/bin/env bash
# Make sure PostgreSQL (127.0.0.1:5432) and Mosquitto (127.0.0.1:1883) answer, starting the
# machine's own services when they are installed but stopped. Used by `make test` and CI.
set -euo pipefail

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if ! answers 5432; then
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    echo "starting PostgreSQL $version"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start
  fi
fi
if ! answers 1883; then
  if [ -f /etc/mosquitto/mosquitto.conf ] && command -v mosquitto >/dev/null 2>&1; then
    echo "starting Mosquitto"
    mosquitto -d -c /etc/mosquitto/mosquitto.conf
  fi
fi
for i in $(seq 1 50); do
  answers 5432 && answers 1883 && exit 0
  sleep 0.2
done
answers 5432 || echo "PostgreSQL does not answer on 127.0.0.1:5432" >&2
answers 1883 || echo "Mosquitto does not answer on 127.0.0.1:1883" >&2
exit 1
