"""Settings: arguments over environment over TOML file over defaults; safe production checks."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from central.settings import load_settings as central_settings
from edge_agent.settings import load_settings


def test_precedence_arguments_env_toml_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml = tmp_path / "agent.toml"
    toml.write_text(
        'gateway_id = "gw-toml"\nbroker_port = 1999\nkeepalive_s = 40\n[sim]\nmeters = 12\n'
    )
    monkeypatch.setenv("EIOT_BROKER_PORT", "2000")
    monkeypatch.setenv("EIOT_KEEPALIVE_S", "50")
    s = load_settings(toml, keepalive_s=60)
    assert (s.gateway_id, s.broker_port, s.keepalive_s, s.sim and s.sim.meters) == (
        "gw-toml",
        2000,
        60,
        12,
    )
    assert s.batch_max_age_s == 5.0  # a default


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_settings(tmp_path / "nope.toml")
    with pytest.raises(FileNotFoundError, match="config file not found"):
        central_settings(tmp_path / "nope.toml")


def test_production_refuses_laptop_defaults_and_placeholders(tmp_path: Path) -> None:
    cert, key, ca = (tmp_path / n for n in ("gw-9.crt", "gw-9.key", "ca.crt"))
    for f in (cert, key, ca):
        f.write_text("pem")
    identity = {
        "broker_tls": True,
        "broker_cert_file": cert,
        "broker_key_file": key,
        "broker_ca_file": ca,
    }
    with pytest.raises(ValidationError, match="gateway_id"):
        load_settings(profile="production", **identity)
    with pytest.raises(ValidationError, match="placeholder"):
        load_settings(profile="production", gateway_id="gw-9", broker_password="changeme")
    with pytest.raises(ValidationError, match="plaintext"):  # no TLS
        load_settings(profile="production", gateway_id="gw-9", broker_cert_file=cert)
    with pytest.raises(ValidationError, match="anonymous"):  # TLS, but nobody
        load_settings(profile="production", gateway_id="gw-9", broker_tls=True)
    with pytest.raises(ValidationError, match="no file"):
        load_settings(
            profile="production", gateway_id="gw-9", **{**identity, "broker_key_file": "/nope"}
        )
    with pytest.raises(ValidationError, match="timezone"):  # its local clock, even "UTC"
        load_settings(profile="production", gateway_id="gw-9", **identity)
    ok = load_settings(profile="production", gateway_id="gw-9", timezone="Africa/Accra", **identity)
    assert ok.broker_tls and ok.timezone == "Africa/Accra"
    dsn = "postgresql://eiot_ingest:S3cr3t-x@db/eiot"
    with pytest.raises(ValidationError, match="password"):
        central_settings(profile="production", **identity)
    with pytest.raises(ValidationError, match="superuser"):
        central_settings(profile="production", pg_dsn="postgresql://postgres:S3cr3t-x@db/eiot")
    with pytest.raises(ValidationError, match="plaintext"):
        central_settings(profile="production", pg_dsn=dsn)
    ok = central_settings(profile="production", pg_dsn=dsn, **identity)
    assert ok.profile == "production"


def test_environment_reaches_nested_and_typed_fields(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml = tmp_path / "agent.toml"
    toml.write_text("[SIM]\nmeters = 12\nDays = 2\n")  # TOML keys in any case
    monkeypatch.setenv("EIOT_SIM__METERS", "40")  # nested, over the file's value
    monkeypatch.setenv("eiot_compress", "false")  # any case; a bool from text
    monkeypatch.setenv("EIOT_BROKER_PASSWORD", "s3cret-x")
    monkeypatch.setenv("EIOT_UNRELATED_THING", "ignored")
    s = load_settings(toml)
    assert s.sim is not None and (s.sim.meters, s.sim.days) == (40, 2)
    assert s.compress is False
    assert s.broker_password is not None and s.broker_password.get_secret_value() == "s3cret-x"
    assert "s3cret-x" not in repr(s)
    monkeypatch.setenv("EIOT_BROKER_PORT", "not-a-port")
    with pytest.raises(ValidationError, match="broker_port"):
        load_settings(toml)


def test_the_edge_settings_need_nothing_beyond_pydantic() -> None:
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['pydantic_settings'] = None; "
        "from edge_agent.settings import load_settings; print(load_settings().gateway_id)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "gw-laptop"


def _meter_sources(tmp_path: Path, text: str) -> Path:
    toml = tmp_path / "agent.toml"
    toml.write_text(text)
    return toml


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('[modbus]\n[[modbus.buses]]\nname = "b"\nkind = "tcp"\n'
         '[[modbus.buses.meters]]\nmeter_id = "m"\nunit = 1\nmodel = "sdm120"\n', "needs host"),
        ('[modbus]\n[[modbus.buses]]\nname = "b"\nkind = "rtu"\ndevice = "/dev/x"\n'
         'baudrate = 1234\n[[modbus.buses.meters]]\nmeter_id = "m"\nunit = 1\n'
         'model = "sdm120"\n', "baudrate"),
        ('[modbus]\n[[modbus.buses]]\nname = "b"\nkind = "tcp"\nhost = "h"\n'
         '[[modbus.buses.meters]]\nmeter_id = "m"\nunit = 248\nmodel = "sdm120"\n', "unit"),
        ('[modbus]\n[[modbus.buses]]\nname = "b"\nkind = "tcp"\nhost = "h"\n'
         '[[modbus.buses.meters]]\nmeter_id = "m"\nunit = 1\nmodel = "sdm120"\n'
         '[[modbus.buses.meters]]\nmeter_id = "n"\nunit = 1\nmodel = "sdm120"\n', "one unit id"),
        ('[modbus]\ninterval_s = 7000\n[[modbus.buses]]\nname = "b"\nkind = "tcp"\nhost = "h"\n'
         '[[modbus.buses.meters]]\nmeter_id = "m"\nunit = 1\nmodel = "sdm120"\n', "divide a day"),
        ('[dlms]\n[[dlms.meters]]\nmeter_id = "m"\nhost = "h"\nprofile = "1.0.99"\n', "six groups"),
        ('[dlms]\n[[dlms.meters]]\nmeter_id = "m"\nhost = "h"\n[[dlms.meters]]\nmeter_id = "m"\n'
         'host = "i"\n', "appears twice"),
        ('[modbus]\n[[modbus.buses]]\nname = "b"\nkind = "tcp"\nhost = "h"\n'
         '[[modbus.buses.meters]]\nmeter_id = "m"\nunit = 1\nmodel = "sdm120"\n'
         '[dlms]\n[[dlms.meters]]\nmeter_id = "m"\nhost = "h"\n', "both Modbus and DLMS"),
    ],
)  # fmt: skip
def test_meter_sources_are_checked_at_start(tmp_path: Path, text: str, reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        load_settings(_meter_sources(tmp_path, text))


def test_a_dlms_password_is_never_shown(tmp_path: Path) -> None:
    s = load_settings(
        _meter_sources(
            tmp_path,
            '[dlms]\n[[dlms.meters]]\nmeter_id = "m"\nhost = "h"\npassword = "s3cr3t-pw"\n',
        )
    )
    assert s.dlms is not None and "s3cr3t-pw" not in repr(s)
    assert s.dlms.meters[0].password is not None
    assert s.dlms.meters[0].password.get_secret_value() == "s3cr3t-pw"
