"""The central warehouse: ClickHouse (embedded chDB or a server) fed from Postgres ``raw``.

Imports stay lazy so that ``central --help`` works without the ``warehouse`` extra.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from central.warehouse.client import connect, served
    from central.warehouse.settings import WarehouseSettings, get_settings

__all__ = ["WarehouseSettings", "connect", "get_settings", "served"]


def __getattr__(name: str) -> Any:
    if name in ("connect", "served"):
        from central.warehouse import client

        return getattr(client, name)
    if name in ("WarehouseSettings", "get_settings"):
        from central.warehouse import settings

        return getattr(settings, name)
    raise AttributeError(name)
