"""The project's small PKI: a CA, certificates for the broker, every gateway and every central
service, and a revocation list (``central pki --help``).

Identity is the certificate's Common Name. The broker (``central.broker``) takes the CN as the
MQTT username (``use_identity_as_username``) and as the client id (``use_username_as_clientid``),
so a client can only ever be itself and can take over no other session; the ACL gives each
identity its topics by role. Roles and names:

* ``gateway``: CN = the gateway id (``vocabulary.ID_PATTERN``), never starting with ``svc-``;
* ``ingest``: ``svc-ingest-<worker>``, one per ingest worker (each its own MQTT session);
* ``models``: ``svc-models``, the model publisher (``python -m ml publish``);
* ``alerts``: ``svc-alerts-<name>``, a subscriber to alerts (revenue protection, other systems);
* ``ops``: ``svc-ops``, publishes the operational alerts of ``gateway_watch`` (Airflow);
* ``admin``: ``svc-admin``, manages the broker's access control at runtime (``central broker
  sync``);
* ``broker``: the broker's own server certificate (CN and subject names = its host names).

The directory holds ``ca.key`` (0600: keep it off the broker host in production), ``ca.crt``,
``crl.pem``, ``index.json`` (every certificate issued: name, role, serial, revoked) and the
newest ``<cn>.crt`` / ``<cn>.key`` pair of each identity. Keys are ECDSA P-256. Rotation is
issuing again under the same name, installing the new pair, then revoking the older
certificates (``revoke --older``); revocation adds the
serial to ``crl.pem``, which the broker reads when it starts (restart it).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from central.files import write_atomic
from edge_agent.vocabulary import ID_PATTERN, SERVICE_PREFIX

Role = Literal["gateway", "ingest", "models", "alerts", "ops", "admin", "broker"]
ROLES: tuple[Role, ...] = ("gateway", "ingest", "models", "alerts", "ops", "admin", "broker")
_SERVICE_NAME = {
    "ingest": re.compile(r"^svc-ingest-[A-Za-z0-9_.-]{1,40}$"),
    "models": re.compile(r"^svc-models(-[A-Za-z0-9_.-]{1,40})?$"),
    "alerts": re.compile(r"^svc-alerts-[A-Za-z0-9_.-]{1,40}$"),
    "ops": re.compile(r"^svc-ops$"),
    "admin": re.compile(r"^svc-admin$"),
}
_ID = re.compile(ID_PATTERN)
CA_DAYS = 3650
CERT_DAYS = 825


class PkiError(ValueError):
    """A refused PKI operation (bad name, unknown identity, no CA)."""


@dataclass
class Identity:
    name: str  # the CN
    role: str
    serial: int
    issued_at: str
    not_after: str
    revoked_at: str | None = None


def check_name(name: str, role: Role) -> None:
    """An identity's name must say its role: gateways never look like services."""
    if role == "gateway":
        if not _ID.fullmatch(name) or name.startswith(SERVICE_PREFIX):
            raise PkiError(
                f"gateway id {name!r} must match {ID_PATTERN} and not start with {SERVICE_PREFIX!r}"
            )
    elif role == "broker":
        if not re.fullmatch(r"^[A-Za-z0-9.-]{1,253}$", name):
            raise PkiError(f"broker host name {name!r} is not a host name")
    elif not _SERVICE_NAME[role].fullmatch(name):
        raise PkiError(f"a {role} identity is named like {_SERVICE_NAME[role].pattern}")


class Pki:
    def __init__(self, directory: Path | str) -> None:
        self.dir = Path(directory)

    # --- files ----------------------------------------------------------------------------

    @property
    def ca_cert_path(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def crl_path(self) -> Path:
        return self.dir / "crl.pem"

    def cert_path(self, name: str) -> Path:
        return self.dir / f"{name}.crt"

    def key_path(self, name: str) -> Path:
        return self.dir / f"{name}.key"

    def identities(self) -> list[Identity]:
        path = self.dir / "index.json"
        if not path.exists():
            return []
        return [Identity(**item) for item in json.loads(path.read_text())]

    def _save(self, identities: list[Identity]) -> None:
        write_atomic(self.dir / "index.json", json.dumps([asdict(i) for i in identities], indent=1))

    # --- operations -----------------------------------------------------------------------

    def init(self, name: str = "eiot CA") -> bool:
        """Create the CA (and an empty CRL) unless it exists. True if created."""
        if self.ca_cert_path.exists():
            return False
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        write_atomic(self.dir / "ca.key", _key_pem(key), private=True)
        write_atomic(self.ca_cert_path, cert.public_bytes(serialization.Encoding.PEM))
        self._save([])
        self._write_crl([])
        return True

    def issue(self, name: str, role: Role, *, hosts: tuple[str, ...] = ()) -> Identity:
        """A new key and certificate for ``name`` (``hosts``: DNS names / IPs of a broker).
        Earlier certificates of that name stay valid until revoked: rotate by issuing, installing
        the new pair, then ``revoke(name, older_only=True)``."""
        check_name(name, role)
        ca_key, ca_cert = self._ca()
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        usage = (
            ExtendedKeyUsageOID.SERVER_AUTH if role == "broker" else ExtendedKeyUsageOID.CLIENT_AUTH
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=CERT_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
        )
        if role == "broker":
            alt: list[x509.GeneralName] = []
            for host in (name, *hosts):
                try:
                    alt.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    alt.append(x509.DNSName(host))
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        identities = self.identities()
        if any(i.name == name and i.role != role for i in identities):
            raise PkiError(f"{name!r} was issued with another role")
        identity = Identity(
            name=name,
            role=role,
            serial=cert.serial_number,
            issued_at=now.isoformat(),
            not_after=(now + dt.timedelta(days=CERT_DAYS)).isoformat(),
        )
        identities.append(identity)
        write_atomic(self.key_path(name), _key_pem(key), private=True)
        write_atomic(self.cert_path(name), cert.public_bytes(serialization.Encoding.PEM))
        self._save(identities)
        self._write_crl(identities)
        return identity

    def ensure(self, name: str, role: Role, *, hosts: tuple[str, ...] = ()) -> Identity:
        """``name``'s live identity, issued now if it has none (provisioning scripts, demo)."""
        for identity in self.active(role):
            if identity.name == name and self.cert_path(name).exists():
                return identity
        return self.issue(name, role, hosts=hosts)

    def revoke(self, name: str, *, older_only: bool = False) -> int:
        """Revoke the live certificates of ``name`` (all, or all but the newest: the end of a
        rotation); returns how many."""
        identities = self.identities()
        live = [i for i in identities if i.name == name and i.revoked_at is None]
        if not live:
            raise PkiError(f"no live certificate named {name!r}")
        if older_only:
            live = live[:-1]
        now = _now().isoformat()
        for i in live:
            i.revoked_at = now
        n = len(live)
        self._save(identities)
        self._write_crl(identities)
        return n

    def active(self, role: Role | None = None) -> list[Identity]:
        """Identities with a live certificate (the newest of each name), by name."""
        live = {i.name: i for i in self.identities() if i.revoked_at is None}
        return sorted(
            (i for i in live.values() if role is None or i.role == role), key=lambda i: i.name
        )

    # --- internals ------------------------------------------------------------------------

    def _ca(self) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        if not self.ca_cert_path.exists():
            raise PkiError(f"no CA in {self.dir}: run `central pki init` first")
        key = serialization.load_pem_private_key((self.dir / "ca.key").read_bytes(), None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PkiError("the CA key is not an EC key")
        return key, x509.load_pem_x509_certificate(self.ca_cert_path.read_bytes())

    def _write_crl(self, identities: list[Identity]) -> None:
        ca_key, ca_cert = self._ca()
        now = _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(ca_cert.subject)
            .last_update(now - dt.timedelta(minutes=5))
            .next_update(now + dt.timedelta(days=CA_DAYS))
        )
        for i in identities:
            if i.revoked_at is not None:
                builder = builder.add_revoked_certificate(
                    x509.RevokedCertificateBuilder()
                    .serial_number(i.serial)
                    .revocation_date(dt.datetime.fromisoformat(i.revoked_at))
                    .build()
                )
        crl = builder.sign(ca_key, hashes.SHA256())
        write_atomic(self.crl_path, crl.public_bytes(serialization.Encoding.PEM))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
