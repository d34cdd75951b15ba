"""MQTT topic names (``docs/contracts.md``). The root is configurable, default ``eiot/v1``."""

from __future__ import annotations

DEFAULT_ROOT = "eiot/v1"


def readings(root: str, gateway_id: str) -> str:
    return f"{root}/gw/{gateway_id}/readings"


def ack(root: str, gateway_id: str) -> str:
    return f"{root}/gw/{gateway_id}/ack"


def alerts(root: str, gateway_id: str) -> str:
    return f"{root}/gw/{gateway_id}/alerts"


def status(root: str, gateway_id: str) -> str:
    return f"{root}/gw/{gateway_id}/status"


def model(root: str, name: str) -> str:
    return f"{root}/models/{name}"


def ops_alerts(root: str) -> str:
    """Central's operational alerts about gateways (``ops_alert.v1``, DAG ``gateway_watch``)."""
    return f"{root}/ops/alerts"


def gateway_of(topic: str, root: str) -> str | None:
    """``<root>/gw/<gateway_id>/<kind>`` → ``gateway_id``; None for any other topic."""
    prefix = f"{root}/gw/"
    if not topic.startswith(prefix):
        return None
    parts = topic[len(prefix) :].split("/")
    if len(parts) != 2 or not parts[0]:
        return None
    return parts[0]


def shared(group: str | None, topic_filter: str) -> str:
    """A shared subscription filter; ``group=None`` for brokers without shared subscriptions."""
    return f"$share/{group}/{topic_filter}" if group else topic_filter
