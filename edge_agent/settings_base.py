"""One way to build a part's settings: explicit arguments, then ``EIOT_*`` environment
variables, then a TOML file (``--config`` or ``EIOT_CONFIG``), then defaults. Shared by the
agent and central (central imports the edge, never the other way).

Plain pydantic and ``tomllib``: the gateway installs nothing beyond pydantic for its settings.
Environment variables: ``EIOT_<FIELD>`` (any case), ``EIOT_<FIELD>__<SUBFIELD>`` for a nested
model (``EIOT_SIM__METERS=100``); a value for a list, dict or model field is JSON.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, SecretStr

S = TypeVar("S", bound="TomlEnvSettings")

ENV_PREFIX = "EIOT_"
NESTED = "__"


class TomlEnvSettings(BaseModel):
    model_config = ConfigDict(extra="ignore", validate_default=True)


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    """The BaseModel class of a field annotated ``Model`` or ``Model | None``."""
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _env_value(text: str, model: type[BaseModel] | None, annotation: Any) -> Any:
    structured = model is not None or getattr(annotation, "__origin__", None) in (list, dict)
    if structured:
        try:
            return json.loads(text)
        except ValueError:
            return text  # pydantic reports the field
    return text  # pydantic's lax mode turns "5", "true", "1.5" into the field's type


def env_values(cls: type[BaseModel], environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The ``EIOT_*`` variables that name a field of ``cls`` (or of a nested model field)."""
    env = {k.upper(): v for k, v in (os.environ if environ is None else environ).items()}
    out: dict[str, Any] = {}
    for name, field in cls.model_fields.items():
        key = ENV_PREFIX + name.upper()
        model = _nested_model(field.annotation)
        if key in env:
            out[name] = _env_value(env[key], model, field.annotation)
        if model is not None:
            sub = {
                k[len(key) + len(NESTED) :].lower(): v
                for k, v in env.items()
                if k.startswith(key + NESTED)
            }
            known = {n: v for n, v in sub.items() if n in model.model_fields}
            if known:
                base = out.get(name)
                out[name] = {**(base if isinstance(base, dict) else {}), **known}
    return out


def _lower_keys(doc: dict[str, Any]) -> dict[str, Any]:
    return {k.lower(): _lower_keys(v) if isinstance(v, dict) else v for k, v in doc.items()}


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(merged.get(k), dict):
            merged[k] = _merge(merged[k], v)
        else:
            merged[k] = v
    return merged


def build(cls: type[S], config_file: Path | str | None = None, **overrides: Any) -> S:
    """``cls`` from a TOML file (if any), the environment and ``overrides``."""
    path = config_file or os.environ.get("EIOT_CONFIG")
    data: dict[str, Any] = {}
    if path is not None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        with open(path, "rb") as fh:
            data = _lower_keys(tomllib.load(fh))  # keys in any case, like the environment
    data = _merge(data, env_values(cls))
    data = _merge(data, overrides)
    return cls.model_validate(data)


PLACEHOLDER_SECRETS = {"", "changeme", "password", "secret", "mosquitto", "admin", "postgres"}


class BrokerSettings(BaseModel):
    """How a part reaches the MQTT broker. The secure setup (``docs/security.md``): TLS on 8883,
    the CA that signed the broker's certificate (``broker_ca_file``; else the system's store)
    and this client's own certificate and key, whose CN is its identity."""

    broker_host: str = "127.0.0.1"
    broker_port: int = 1883
    broker_tls: bool = False
    broker_ca_file: Path | None = None
    broker_cert_file: Path | None = None
    broker_key_file: Path | None = None
    broker_username: str | None = None
    broker_password: SecretStr | None = None

    def broker_problems(self) -> list[str]:
        """What a production profile refuses: plaintext, no identity, placeholder secrets."""
        problems = []
        if not self.broker_tls:
            problems.append("broker_tls must be true (plaintext MQTT is refused in production)")
        has_cert = self.broker_cert_file is not None and self.broker_key_file is not None
        has_password = bool(self.broker_username) and self.broker_password is not None
        if not (has_cert or has_password):
            problems.append(
                "the broker connection needs an identity: broker_cert_file and broker_key_file "
                "(or broker_username and broker_password); anonymous access is refused"
            )
        pw = self.broker_password.get_secret_value() if self.broker_password else None
        if pw is not None and pw.lower() in PLACEHOLDER_SECRETS:
            problems.append("broker_password is a placeholder; set a real secret")
        for name in ("broker_ca_file", "broker_cert_file", "broker_key_file"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                problems.append(f"{name}: no file at {path}")
        return problems
