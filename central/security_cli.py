"""``central pki ...``, ``central broker ...`` and ``central db login``: identities, the secure
broker and PostgreSQL logins (docs/security.md has the procedures that use them)."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path
from typing import Any

DEFAULT_PKI_DIR = "var/pki"


def _pki_dir(args: argparse.Namespace) -> Path:
    return Path(args.dir or os.environ.get("EIOT_PKI_DIR") or DEFAULT_PKI_DIR)


def _add_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir", help=f"the PKI directory (default: EIOT_PKI_DIR or {DEFAULT_PKI_DIR})"
    )


# --- pki -----------------------------------------------------------------------------------


def cmd_pki_init(args: argparse.Namespace) -> int:
    from central.pki import Pki

    pki = Pki(_pki_dir(args))
    created = pki.init(args.name)
    print(f"{'created' if created else 'kept the existing'} CA in {pki.dir}")
    return 0


def cmd_pki_issue(args: argparse.Namespace) -> int:
    from central.pki import Pki, PkiError

    pki = Pki(_pki_dir(args))
    try:
        live = [i for i in pki.active(args.role) if i.name == args.name]
        if args.if_missing and live and pki.cert_path(args.name).exists():
            print(
                f"kept the live certificate of {args.role} {args.name} (serial {live[-1].serial:x})"
            )
            return 0
        identity = pki.issue(args.name, args.role, hosts=tuple(args.host))
    except PkiError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    print(
        f"issued {identity.role} {identity.name} (serial {identity.serial:x}), valid until "
        f"{identity.not_after}"
    )
    print(f"  certificate {pki.cert_path(identity.name)}")
    print(f"  key         {pki.key_path(identity.name)} (private: move it, do not copy it around)")
    print(f"  CA          {pki.ca_cert_path}")
    if identity.role != "broker":
        print("then `central broker sync` gives the identity its topics on a running broker")
    return 0


def cmd_pki_revoke(args: argparse.Namespace) -> int:
    from central.pki import Pki, PkiError

    pki = Pki(_pki_dir(args))
    try:
        n = pki.revoke(args.name, older_only=args.older)
    except PkiError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    print(f"revoked {n} certificate(s) of {args.name}; {pki.crl_path} updated")
    print(
        "copy crl.pem to the broker and restart it; `central broker sync` disconnects a "
        "fully revoked identity at once"
    )
    return 0


def cmd_pki_list(args: argparse.Namespace) -> int:
    from central.pki import Pki

    pki = Pki(_pki_dir(args))
    rows = pki.identities() if args.all else pki.active()
    print(f"{'name':<32}{'role':<9}{'serial':<20}{'not after':<27}revoked")
    for i in rows:
        print(f"{i.name:<32}{i.role:<9}{i.serial:<20x}{i.not_after:<27}{i.revoked_at or '-'}")
    return 0


# --- broker --------------------------------------------------------------------------------


def _files(args: argparse.Namespace) -> Any:
    from central.broker import BrokerFiles

    return BrokerFiles(
        pki_dir=_pki_dir(args), state_dir=Path(args.state_dir), name=args.broker_name
    )


def cmd_broker_config(args: argparse.Namespace) -> int:
    from central.broker import mosquitto_conf, write_broker

    options = {"port": args.port, "bind": args.bind, "user": args.user, "log_dest": args.log_dest}
    if args.print:
        sys.stdout.write(mosquitto_conf(_files(args), **options))
        return 0
    path = write_broker(_files(args), args.topic_root, **options)
    print(f"wrote {path} (and the access-control state beside it, unless it existed)")
    return 0


def cmd_broker_sync(args: argparse.Namespace) -> int:
    from central.broker import BrokerAdmin
    from central.pki import Pki

    pki = Pki(_pki_dir(args))
    admin = BrokerAdmin(args.host, args.port, pki, name=args.admin)
    try:
        commands, failed = admin.sync(pki, args.topic_root, dry_run=args.dry_run)
    finally:
        admin.close()
    for c in commands:
        what = c.get("username") or c.get("rolename")
        print(" ".join(str(x) for x in (c["command"], what, c.get("acltype"), c.get("topic")) if x))
    if not commands:
        print("the broker is in line with the PKI")
    elif args.dry_run:
        print("nothing sent")
    for answer in failed:
        print(f"refused by the broker: {answer}", file=sys.stderr)
    return 1 if failed else 0


# --- db login ------------------------------------------------------------------------------


def _password(args: argparse.Namespace) -> str:
    if args.password_file:
        return Path(args.password_file).read_text().strip()
    if os.environ.get("EIOT_LOGIN_PASSWORD"):
        return os.environ["EIOT_LOGIN_PASSWORD"]
    return getpass.getpass(f"password for {args.name}: ")


def cmd_db_login(args: argparse.Namespace) -> int:
    from psycopg.conninfo import make_conninfo

    from central.roles import create_login

    admin_dsn = args.admin_dsn or os.environ.get("EIOT_ADMIN_DSN")
    if not admin_dsn:
        print(
            "refused: give --admin-dsn or EIOT_ADMIN_DSN (a role with CREATEROLE)", file=sys.stderr
        )
        return 2
    try:
        create_login(admin_dsn, args.name, args.role, _password(args))
    except ValueError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    print(
        f"login {args.name} is a member of {args.role}; its DSN: "
        f"{make_conninfo(admin_dsn, user=args.name, password='...')}"
    )
    return 0


def register_db_login(db_sub: Any) -> None:
    from central.roles import ROLES

    login = db_sub.add_parser(
        "login",
        help="create or update a service's PostgreSQL login (member of one role)",
        description="Create (or update: idempotent) a LOGIN role that is a member of exactly one "
        "of the project's group roles. The password comes from --password-file, "
        "EIOT_LOGIN_PASSWORD or a prompt; it is hashed before it is sent. "
        + "Roles: "
        + "; ".join(f"{r}: {what}" for r, what in ROLES.items()),
    )
    login.add_argument("--name", required=True, help="the login's name (e.g. ingest_site1)")
    login.add_argument("--role", required=True, choices=list(ROLES), help="its group role")
    login.add_argument("--admin-dsn", help="DSN of a role with CREATEROLE (or EIOT_ADMIN_DSN)")
    login.add_argument("--password-file", help="read the password from this file")
    login.set_defaults(func=cmd_db_login)


def register(sub: Any) -> None:
    """Add ``pki`` and ``broker`` to the ``central`` command."""
    from central.broker import ADMIN, TLS_PORT
    from central.pki import ROLES
    from edge_agent.topics import DEFAULT_ROOT

    pki = sub.add_parser(
        "pki",
        help="the CA and the certificates of gateways and services",
        description="A small PKI: a CA, one certificate per gateway and service (its CN is the "
        "identity), a revocation list. Rotation: issue again, install, revoke --older.",
    )
    pki_sub = pki.add_subparsers(dest="pki_command", required=True, metavar="COMMAND")
    init = pki_sub.add_parser(
        "init",
        help="create the CA (kept if it exists)",
        description="Create the CA key, certificate and an empty CRL.",
    )
    _add_dir(init)
    init.add_argument("--name", default="eiot CA", help="the CA's common name")
    init.set_defaults(func=cmd_pki_init)

    issue = pki_sub.add_parser(
        "issue",
        help="a new key and certificate for a gateway or a service",
        description="Issue a certificate whose CN is NAME. Gateways are named by their gateway "
        "id; services svc-ingest-<worker>, svc-models, svc-alerts-<name>, svc-admin; the broker "
        "by its host name (--host adds other names or addresses).",
    )
    _add_dir(issue)
    issue.add_argument("name", help="the identity (gateway id, service name or broker host)")
    issue.add_argument(
        "--role", required=True, choices=list(ROLES), help="what the identity may do"
    )
    issue.add_argument(
        "--host",
        action="append",
        default=[],
        help="another DNS name or IP address of the broker (repeatable)",
    )
    issue.add_argument(
        "--if-missing",
        action="store_true",
        help="keep the live certificate of NAME if it has one (provisioning scripts: idempotent)",
    )
    issue.set_defaults(func=cmd_pki_issue)

    revoke = pki_sub.add_parser(
        "revoke",
        help="revoke an identity's certificates (or the older ones after a rotation)",
        description="Add the certificates to the CRL. The broker reads the CRL when it starts; "
        "`central broker sync` disconnects a fully revoked identity at once.",
    )
    _add_dir(revoke)
    revoke.add_argument("name", help="the identity")
    revoke.add_argument(
        "--older", action="store_true", help="keep the newest certificate (the end of a rotation)"
    )
    revoke.set_defaults(func=cmd_pki_revoke)

    lst = pki_sub.add_parser(
        "list",
        help="the identities with a live certificate",
        description="List identities (newest certificate of each name).",
    )
    _add_dir(lst)
    lst.add_argument("--all", action="store_true", help="every certificate ever issued")
    lst.set_defaults(func=cmd_pki_list)

    broker = sub.add_parser(
        "broker",
        help="the secure Mosquitto: its configuration and access control",
        description="Mosquitto with TLS, client certificates and the Dynamic Security plugin.",
    )
    broker_sub = broker.add_subparsers(dest="broker_command", required=True, metavar="COMMAND")
    config = broker_sub.add_parser(
        "config",
        help="write mosquitto.conf and the first access-control state",
        description="Write <state-dir>/mosquitto.conf and, unless it exists, the plugin's state "
        "file with one role per gateway and service of the PKI.",
    )
    _add_dir(config)
    config.add_argument("--state-dir", default="var/broker", help="persistence and plugin state")
    config.add_argument(
        "--broker-name",
        default="localhost",
        help="the broker's identity in the PKI (its certificate's name)",
    )
    config.add_argument("--port", type=int, default=TLS_PORT, help="the TLS listener's port")
    config.add_argument("--bind", default="0.0.0.0", help="the address to listen on")
    config.add_argument("--user", help="the user Mosquitto drops to")
    config.add_argument("--log-dest", help="Mosquitto log_dest (default: stderr)")
    config.add_argument("--topic-root", default=DEFAULT_ROOT, help="the topics' root")
    config.add_argument("--print", action="store_true", help="print the configuration only")
    config.set_defaults(func=cmd_broker_config)

    sync = broker_sub.add_parser(
        "sync",
        help="bring a running broker's access control in line with the PKI",
        description="As the admin identity: create the roles and clients of new identities, "
        "delete those whose certificates are all revoked (the broker disconnects them).",
    )
    _add_dir(sync)
    sync.add_argument("--host", default="127.0.0.1", help="the broker's host")
    sync.add_argument("--port", type=int, default=TLS_PORT, help="the broker's TLS port")
    sync.add_argument("--admin", default=ADMIN, help="the admin identity to connect as")
    sync.add_argument("--topic-root", default=DEFAULT_ROOT, help="the topics' root")
    sync.add_argument("--dry-run", action="store_true", help="print the commands, send nothing")
    sync.set_defaults(func=cmd_broker_sync)
