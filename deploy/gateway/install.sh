#!/bin/sh
# Install the gateway agent from this bundle, offline (docs/gateway-install.md). As root:
#   sh install.sh            the venv, the eiot user, /etc/eiot/agent.toml, the systemd unit
#   sh install.sh --venv-only --prefix DIR    only the venv in DIR/venv (no root needed)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
prefix=/opt/eiot
system=yes
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) prefix=$2; shift 2 ;;
        --venv-only) system=no; shift ;;
        -h|--help) sed -n '2,4p' "$0"; exit 0 ;;
        *) echo "unknown option: $1" >&2; exit 2 ;;
    esac
done

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    echo "this bundle is built for Python 3.11 (Raspberry Pi OS 12 / Debian 12): $("$python" -V)" >&2
    exit 1
fi
if [ "$system" = yes ] && [ "$(id -u)" -ne 0 ]; then
    echo "run as root (or with --venv-only --prefix DIR)" >&2
    exit 1
fi

echo "checking the bundle"
(cd "$here" && sha256sum --quiet -c SHA256SUMS)
"$python" -m venv "$prefix/venv"
"$prefix/venv/bin/python" -m pip install --quiet --upgrade --no-index --find-links "$here/wheels" \
    "energy-iot-pipeline[edge]"
"$prefix/venv/bin/edge-agent" --help >/dev/null
echo "agent installed in $prefix/venv"
[ "$system" = yes ] || exit 0

id eiot >/dev/null 2>&1 || useradd --system --home-dir /var/lib/eiot --shell /usr/sbin/nologin eiot
install -m 0644 "$here/gateway-install.md" "$prefix/"
install -d -m 0755 /etc/eiot
if [ ! -e /etc/eiot/agent.toml ]; then
    install -m 0640 -g eiot "$here/agent.toml.example" /etc/eiot/agent.toml
fi
install -d -o eiot -g eiot -m 0700 /var/lib/eiot /var/lib/eiot/spool
install -m 0644 "$here/eiot-agent.service" /etc/systemd/system/eiot-agent.service
systemctl daemon-reload
echo "next: edit /etc/eiot/agent.toml, put the certificates in /etc/eiot (group eiot, mode 0640),"
echo "then: systemctl enable --now eiot-agent"
