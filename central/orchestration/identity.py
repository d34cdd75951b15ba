"""Which identity a DAG's tasks act as when one Airflow runs DAGs that need different ones.

``warehouse_refresh`` needs the loader's PostgreSQL login; ``model_lifecycle`` and
``model_rollback`` the ``ml`` login, the ``svc-models`` broker identity and the model signing
key; ``gateway_watch`` the ``svc-ops`` broker identity. A worker's environment holds them all,
each under its scope: for the tasks of a DAG of scope ``ML``, ``EIOT_ML__<NAME>`` is
``EIOT_<NAME>``; what a scope does not set comes from the plain ``EIOT_<NAME>``. Every scope's
variables are removed from the environment the task sees, so a task of one scope is not handed
another's settings (a laptop that sets no scope runs every DAG with the plain variables).

No Airflow here: the DAG files call :func:`acting_as` inside their tasks.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Literal

Scope = Literal["ML", "OPS"]
ML: Scope = "ML"  # model_lifecycle, model_rollback
OPS: Scope = "OPS"  # gateway_watch
SCOPES: tuple[Scope, ...] = (ML, OPS)
PREFIX = "EIOT_"


def scope_prefix(scope: Scope) -> str:
    """``EIOT_ML__`` for ``ML``: the prefix of that scope's variables."""
    return f"{PREFIX}{scope}__"


def scoped(scope: Scope, environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` as a task of ``scope`` sees it: the scope's variables in place of the plain
    ones, no scope's variables left."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}: one of {', '.join(SCOPES)}")
    prefixes = tuple(scope_prefix(s) for s in SCOPES)
    own = scope_prefix(scope)
    out = {k: v for k, v in environ.items() if not k.upper().startswith(prefixes)}
    for key, value in environ.items():
        if key.upper().startswith(own) and len(key) > len(own):
            out[PREFIX + key[len(own) :].upper()] = value
    return out


def as_scope(scope: Scope, env: Mapping[str, str]) -> dict[str, str]:
    """Plain ``EIOT_<NAME>`` variables renamed for ``scope`` (``EIOT_<SCOPE>__<NAME>``)."""
    stray = [k for k in env if not k.upper().startswith(PREFIX)]
    if stray:
        raise ValueError(f"not EIOT_ variables: {', '.join(stray)}")
    return {scope_prefix(scope) + k.upper().removeprefix(PREFIX): v for k, v in env.items()}


@contextmanager
def acting_as(scope: Scope) -> Iterator[None]:
    """The process environment as :func:`scoped` gives it, put back on exit (``dag.test`` runs
    every task in one process)."""
    saved = dict(os.environ)
    view = scoped(scope, saved)
    os.environ.clear()
    os.environ.update(view)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
