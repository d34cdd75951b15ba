"""The secure broker: Mosquitto with one TLS listener that knows every client by its certificate,
and the Dynamic Security plugin giving each identity its topics (``central broker --help``).

* ``require_certificate`` + ``use_identity_as_username``: a client is its certificate's CN
  (``central.pki``); no anonymous client, no password.
* ``use_username_as_clientid``: the client id is the identity too, so nobody can take over
  another client's session (a second connection of the same identity replaces the first).
* Dynamic Security, deny by default: a gateway publishes only its own readings, alerts and
  status, subscribes only to its own acks and the models; only ``svc-ingest-*`` identities may
  subscribe to every gateway's readings, alerts and status (shared or not) and publish acks;
  only ``svc-models`` publishes models (and withdrawals); only ``svc-ops`` publishes operational
  alerts (``{root}/ops/alerts``); ``svc-alerts-*`` read alerts (gateways' and operational) only.
  The plugin checks SUBSCRIBE packets (a refused one gets reason code 0x87), which Mosquitto's
  plain ``acl_file`` does not: with it, a gateway could join the ingest's shared subscription
  and have its share of every gateway's batches dropped at delivery.
* ``crlfile``: revoked certificates cannot connect after a restart; ``sync`` deletes a revoked
  identity from the running broker at once (the plugin disconnects it).

The plugin's state file is generated from the PKI's identities (:func:`dynsec_config`) before
the broker's first start; a running broker is brought in line over its ``$CONTROL`` API by an
identity with the admin role (:func:`sync_commands`, ``central broker sync``).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from central.pki import Identity, Pki
from edge_agent import topics

DYNSEC_PLUGIN = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"
CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
TLS_PORT = 8883
# One admin identity manages the plugin at runtime (its $CONTROL topics and nothing else).
ADMIN = "svc-admin"

_SEND, _RECEIVE = "publishClientSend", "publishClientReceive"
_SUB_PATTERN, _SUB_LITERAL = "subscribePattern", "subscribeLiteral"


def _acl(kind: str, topic: str) -> dict[str, Any]:
    return {"acltype": kind, "topic": topic, "allow": True, "priority": 0}


def _read(topic: str, group: str | None = None) -> list[dict[str, Any]]:
    """Subscribe to ``topic`` and receive it; with ``group``, also through that shared
    subscription group (``+``: any group)."""
    acls = [_acl(_SUB_PATTERN, topic), _acl(_RECEIVE, topic)]
    if group:
        acls.append(_acl(_SUB_PATTERN, f"$share/{group}/{topic}"))
    return acls


def gateway_role(root: str, gateway_id: str) -> dict[str, Any]:
    """What gateway ``gateway_id`` may do: its own topics only (the plugin has no per-user
    substitution, so every gateway has a role of its own)."""
    own = f"{root}/gw/{gateway_id}"
    return {
        "rolename": f"gw.{gateway_id}",
        "acls": [
            _acl(_SEND, f"{own}/readings"),
            _acl(_SEND, f"{own}/alerts"),
            _acl(_SEND, f"{own}/status"),
            _acl(_SUB_LITERAL, f"{own}/ack"),
            _acl(_RECEIVE, f"{own}/ack"),
            *_read(f"{root}/models/+"),
        ],
    }


def service_roles(root: str) -> list[dict[str, Any]]:
    gw = f"{root}/gw/+"
    return [
        {
            "rolename": "ingest",
            "acls": [
                *_read(f"{gw}/readings", group="+"),
                *_read(f"{gw}/alerts", group="+"),
                *_read(f"{gw}/status", group="+"),
                _acl(_SEND, f"{gw}/ack"),
            ],
        },
        {
            "rolename": "models",
            "acls": [_acl(_SEND, f"{root}/models/+"), *_read(f"{root}/models/+")],
        },
        {
            "rolename": "ops",
            "acls": [_acl(_SEND, topics.ops_alerts(root))],
        },
        {
            "rolename": "admin",
            "acls": [
                _acl(_SEND, f"{CONTROL_TOPIC}/#"),
                *_read(f"{CONTROL_TOPIC}/#"),
            ],
        },
    ]


def alerts_role(root: str, name: str) -> dict[str, Any]:
    """What alert subscriber ``name`` may do: read every gateway's alerts, plainly or through
    a shared-subscription group named after itself. Never through any group (``$share/+``
    would let it join the ingest's group and take a share of the alerts away from central)."""
    return {
        "rolename": f"alerts.{name}",
        "acls": [*_read(f"{root}/gw/+/alerts", group=name), *_read(topics.ops_alerts(root))],
    }


def _role_of(identity: Identity) -> str | None:
    if identity.role == "gateway":
        return f"gw.{identity.name}"
    if identity.role == "alerts":
        return f"alerts.{identity.name}"
    return identity.role if identity.role in ("ingest", "models", "ops", "admin") else None


def clients_and_roles(
    identities: Iterable[Identity], root: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The plugin's clients (one per live identity, no password: the certificate is the
    credential) and roles (the services', one per gateway, one per alert subscriber)."""
    clients: list[dict[str, Any]] = []
    roles = service_roles(root)
    for identity in identities:
        role = _role_of(identity)
        if role is None:
            continue
        if identity.role == "gateway":
            roles.append(gateway_role(root, identity.name))
        elif identity.role == "alerts":
            roles.append(alerts_role(root, identity.name))
        clients.append({"username": identity.name, "roles": [{"rolename": role}]})
    return clients, roles


def dynsec_config(pki: Pki, root: str) -> dict[str, Any]:
    """The plugin's state file for the live identities of ``pki``: deny by default."""
    clients, roles = clients_and_roles(pki.active(), root)
    return {
        "defaultACLAccess": {
            _SEND: False,
            _RECEIVE: False,
            "subscribe": False,
            "unsubscribe": True,
        },
        "clients": clients,
        "groups": [],
        "roles": roles,
    }


@dataclass(frozen=True)
class BrokerFiles:
    """Where a secure broker's files are."""

    pki_dir: Path
    state_dir: Path  # persistence, the plugin's state file, the log
    name: str = "localhost"  # the broker certificate's identity in the PKI

    @property
    def dynsec(self) -> Path:
        return self.state_dir / "dynamic-security.json"


#: The layout docs/security.md installs on a broker host; ``mosquitto/secure.conf`` is
#: :func:`mosquitto_conf` for it (a test keeps the two equal).
INSTALLED = BrokerFiles(Path("/etc/mosquitto/eiot"), Path("/var/lib/mosquitto/eiot"), "broker")
INSTALLED_OPTIONS: dict[str, Any] = {"user": "mosquitto", "log_dest": "syslog"}


def mosquitto_conf(
    files: BrokerFiles,
    *,
    port: int = TLS_PORT,
    bind: str = "0.0.0.0",
    user: str | None = None,
    log_dest: str | None = None,
) -> str:
    """The broker's configuration: one TLS listener, client certificates, the plugin."""
    pki = Pki(files.pki_dir)
    lines = [
        "# Generated by `central broker config` (central/broker.py); see docs/security.md.",
        "per_listener_settings false",
        "allow_anonymous false",
        f"plugin {DYNSEC_PLUGIN}",
        f"plugin_opt_config_file {files.dynsec}",
        "",
        "# Sessions and queued QoS 1 messages survive a restart; gateways come back from hours",
        "# of load-shedding with a backlog.",
        "persistence true",
        f"persistence_location {files.state_dir}/",
        "autosave_interval 5",
        "max_queued_messages 100000",
        # Per client, in memory: the ingest's queue holds every gateway's batches while central
        # is away. Beyond it the broker drops new QoS 1 messages for that client, which loses
        # nothing (unacknowledged batches stay in the agents' buffers and are sent again).
        "max_queued_bytes 536870912",
        "max_inflight_messages 64",
        # The largest message a gateway or central sends is a readings batch (central refuses
        # more than 8 MiB); a client sending a larger packet is disconnected before it costs
        # anyone memory.
        "max_packet_size 8400000",
        "",
        f"listener {port} {bind}",
        "use_username_as_clientid true",
        f"cafile {pki.ca_cert_path}",
        f"certfile {pki.cert_path(files.name)}",
        f"keyfile {pki.key_path(files.name)}",
        f"crlfile {pki.crl_path}",
        "require_certificate true",
        "use_identity_as_username true",
        "tls_version tlsv1.2",
        "",
        f"log_dest {log_dest or 'stderr'}",
        "log_type error",
        "log_type warning",
        "log_type notice",
    ]
    if user:
        lines.append(f"user {user}")
    return "\n".join(lines) + "\n"


def write_broker(files: BrokerFiles, root: str, **conf: Any) -> Path:
    """Write the plugin's state (unless the broker already keeps one) and the configuration;
    returns the configuration's path."""
    files.state_dir.mkdir(parents=True, exist_ok=True)
    if not files.dynsec.exists():
        files.dynsec.write_text(json.dumps(dynsec_config(Pki(files.pki_dir), root), indent=1))
    path = files.state_dir / "mosquitto.conf"
    path.write_text(mosquitto_conf(files, **conf))
    return path


# --- a running broker ----------------------------------------------------------------------


def _acl_key(acl: dict[str, Any]) -> tuple[str, str, bool, int]:
    return (acl["acltype"], acl["topic"], bool(acl.get("allow", True)), int(acl.get("priority", 0)))


def sync_commands(
    have_clients: Iterable[dict[str, Any]],
    have_roles: Iterable[dict[str, Any]],
    pki: Pki,
    root: str,
) -> list[dict[str, Any]]:
    """``$CONTROL`` commands that bring a running broker (its clients and roles as
    ``listClients`` / ``listRoles`` with ``verbose`` give them) in line with the PKI and the
    code: missing roles and clients created, roles' ACLs and clients' roles corrected, clients
    whose certificates were all revoked deleted (the plugin disconnects them), roles nobody
    should have deleted. The admin's own client, if it goes, goes last."""
    clients, roles = clients_and_roles(pki.active(), root)
    current = {r["rolename"]: {_acl_key(a) for a in r.get("acls", [])} for r in have_roles}
    commands: list[dict[str, Any]] = []
    for role in roles:
        name = role["rolename"]
        if name not in current:
            commands.append({"command": "createRole", **role})
            continue
        want = {_acl_key(a) for a in role["acls"]}
        for kind, topic, _, _ in sorted(current[name] - want):
            commands.append(
                {"command": "removeRoleACL", "rolename": name, "acltype": kind, "topic": topic}
            )
        for kind, topic, allow, priority in sorted(want - current[name]):
            commands.append(
                {
                    "command": "addRoleACL",
                    "rolename": name,
                    "acltype": kind,
                    "topic": topic,
                    "allow": allow,
                    "priority": priority,
                }
            )
    have = {c["username"]: {r["rolename"] for r in c.get("roles", [])} for c in have_clients}
    for client in clients:
        user, want_roles = client["username"], {r["rolename"] for r in client["roles"]}
        if user not in have:
            commands.append({"command": "createClient", **client})
            continue
        for rolename in sorted(have[user] - want_roles):
            commands.append({"command": "removeClientRole", "username": user, "rolename": rolename})
        for rolename in sorted(want_roles - have[user]):
            commands.append({"command": "addClientRole", "username": user, "rolename": rolename})
    gone = sorted(set(have) - {c["username"] for c in clients}, key=lambda u: (u == ADMIN, u))
    commands += [{"command": "deleteClient", "username": user} for user in gone]
    wanted = {r["rolename"] for r in roles}
    commands += [{"command": "deleteRole", "rolename": n} for n in sorted(set(current) - wanted)]
    return commands


def identity_client(pki: Pki, name: str) -> Any:
    """A paho MQTT 5 client that will connect over TLS as identity ``name`` of ``pki`` (the
    broker makes the client id the certificate's CN anyway)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5)
    client.tls_set(
        ca_certs=str(pki.ca_cert_path),
        certfile=str(pki.cert_path(name)),
        keyfile=str(pki.key_path(name)),
    )
    return client


class BrokerAdmin:
    """A client with the admin role, talking to the plugin's ``$CONTROL`` API."""

    def __init__(
        self, host: str, port: int, pki: Pki, name: str = ADMIN, timeout_s: float = 10.0
    ) -> None:
        self.timeout_s = timeout_s
        self._responses: list[dict[str, Any]] = []
        self._got = threading.Condition()
        self.client = identity_client(pki, name)
        self.client.on_message = self._on_message
        connected, subscribed = threading.Event(), threading.Event()
        self.client.on_connect = lambda *a: connected.set()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect(host, port)
        self.client.loop_start()
        if not connected.wait(timeout_s):
            raise TimeoutError(f"broker {host}:{port} did not accept the admin identity")
        self.client.subscribe(f"{CONTROL_TOPIC}/response", qos=1)
        if not subscribed.wait(timeout_s):
            raise TimeoutError("no answer to the admin's subscription")

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._got:
            self._responses.append(json.loads(msg.payload))
            self._got.notify_all()

    def send(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Send commands; return the plugin's answers (one per command)."""
        if not commands:
            return []
        with self._got:
            self._responses.clear()
        self.client.publish(CONTROL_TOPIC, json.dumps({"commands": commands}), qos=1)
        with self._got:
            self._got.wait_for(lambda: bool(self._responses), self.timeout_s)
            if not self._responses:
                raise TimeoutError("no answer from the Dynamic Security plugin")
            answers: list[dict[str, Any]] = self._responses[0].get("responses", [])
        return answers

    def state(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The clients (with their roles) and the roles (with their ACLs) the broker knows."""
        answers = self.send(
            [
                {"command": "listClients", "verbose": True, "count": -1},
                {"command": "listRoles", "verbose": True, "count": -1},
            ]
        )
        by_command = {a.get("command"): a.get("data", {}) for a in answers}
        return (
            list(by_command.get("listClients", {}).get("clients", [])),
            list(by_command.get("listRoles", {}).get("roles", [])),
        )

    def sync(
        self, pki: Pki, root: str, dry_run: bool = False
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Bring the broker in line with ``pki`` (:func:`sync_commands`); returns the commands
        and the answers that report an error."""
        clients, roles = self.state()
        commands = sync_commands(clients, roles, pki, root)
        if dry_run or not commands:
            return commands, []
        return commands, [a for a in self.send(commands) if a.get("error")]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
