"""central/orchestration/identity.py: a DAG's tasks see their scope's variables as the plain
ones, and no scope's variables at all; the process environment comes back afterwards. The DAGs
under Airflow with scoped variables: test_model_lifecycle.py and test_gateway_watch.py."""

from __future__ import annotations

import os

import pytest

from central.orchestration.identity import ML, OPS, SCOPES, acting_as, as_scope, scoped

ENV = {
    "PATH": "/usr/bin",
    "EIOT_PG_DSN": "postgresql://loader@db/eiot",
    "EIOT_BROKER_HOST": "mosquitto",
    "EIOT_ML__PG_DSN": "postgresql://ml@db/eiot",
    "EIOT_ML__MODEL_SIGNING_KEY_FILE": "/keys/signing.pem",
    "EIOT_OPS__BROKER_CERT_FILE": "/pki/svc-ops.crt",
    "eiot_ops__broker_key_file": "/pki/svc-ops.key",  # names are read in any case
}


def test_a_scope_sees_its_own_variables_as_the_plain_ones_and_no_other_scopes() -> None:
    ml = scoped(ML, ENV)
    assert ml == {
        "PATH": "/usr/bin",
        "EIOT_PG_DSN": "postgresql://ml@db/eiot",
        "EIOT_BROKER_HOST": "mosquitto",  # not set for the scope: the plain one
        "EIOT_MODEL_SIGNING_KEY_FILE": "/keys/signing.pem",
    }
    ops = scoped(OPS, ENV)
    assert ops["EIOT_PG_DSN"] == "postgresql://loader@db/eiot"
    assert ops["EIOT_BROKER_CERT_FILE"] == "/pki/svc-ops.crt"
    assert ops["EIOT_BROKER_KEY_FILE"] == "/pki/svc-ops.key"
    assert "EIOT_MODEL_SIGNING_KEY_FILE" not in ops, "the ML scope's key handed to OPS"
    assert not [k for k in ops if "__" in k]
    with pytest.raises(ValueError, match="unknown scope"):
        scoped("WAREHOUSE", ENV)  # type: ignore[arg-type]


def test_as_scope_is_the_inverse_of_scoped() -> None:
    plain = {"EIOT_PG_DSN": "postgresql://ml@db/eiot", "EIOT_BROKER_PORT": "8883"}
    for scope in SCOPES:
        assert scoped(scope, as_scope(scope, plain)) == plain
    with pytest.raises(ValueError, match="not EIOT_"):
        as_scope(ML, {"PGPASSWORD": "x"})


def test_acting_as_puts_the_environment_back_even_after_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    before = dict(os.environ)
    with pytest.raises(RuntimeError), acting_as(ML):
        assert os.environ["EIOT_PG_DSN"] == "postgresql://ml@db/eiot"
        assert "EIOT_OPS__BROKER_CERT_FILE" not in os.environ
        raise RuntimeError("the task failed")
    assert dict(os.environ) == before
