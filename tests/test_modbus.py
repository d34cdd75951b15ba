"""The agent's Modbus client and register maps against pymodbus's own server (TCP, and RTU over a
socat pseudo-terminal pair), and against hostile peers that answer wrong."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymodbus.client import ModbusTcpClient

from edge_agent.fields import READING_NAMES
from edge_agent.meters.modbus import (
    MAX_REGISTERS,
    ModbusError,
    ModbusExceptionResponse,
    ModbusTimeout,
    RtuTransport,
    TcpTransport,
    crc16,
    read_registers,
)
from edge_agent.meters.register_map import (
    MAP_FIELDS,
    MapError,
    RegisterField,
    RegisterMap,
    load_map,
    load_maps,
)
from edge_agent.sources.modbus import read_meter
from simulator.modbus_meters import ModbusPeer, SimulatedMeter, fleet

TYPES = {t.name.lower(): t for t in ModbusTcpClient.DATATYPE}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def pty_pair(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Two serial ends joined by socat: what one writes, the other reads (an RS-485 line)."""
    a, b = tmp_path / "ttyA", tmp_path / "ttyB"
    proc = subprocess.Popen(
        ["socat", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not (a.exists() and b.exists()):
            assert time.monotonic() < deadline, "socat made no pty pair"
            time.sleep(0.05)
        yield str(a), str(b)
    finally:
        proc.terminate()
        proc.wait(10)


# --- the protocol -----------------------------------------------------------------------------


def test_every_baud_rate_the_settings_accept_has_a_line_speed() -> None:
    from edge_agent.meters import BAUD_RATES
    from edge_agent.meters.modbus import _BAUDS

    assert set(BAUD_RATES) == set(_BAUDS)


def test_crc16_matches_the_specification_example() -> None:
    # Modbus over serial line guide: read 10 holding registers of unit 1 from 0 -> CRC C5 CD
    frame = bytes.fromhex("01030000000A")
    assert struct.pack("<H", crc16(frame)) == bytes.fromhex("C5CD")


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(sorted(TYPES.keys() - {"string", "bits"})),
    st.sampled_from(["big", "little"]),
    st.floats(allow_nan=False, allow_infinity=False, width=32) | st.integers(),
)
def test_decoding_agrees_with_pymodbus_encoding(kind: str, order: str, value: float) -> None:
    if kind not in ("float32", "float64"):
        bits = struct.calcsize(TYPES[kind].value[0]) * 8
        lo, hi = (
            (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
            if kind.startswith("int")
            else (0, 2**bits - 1)
        )
        value = (
            int(value) % (hi - lo + 1) + lo
            if not isinstance(value, int)
            else max(lo, min(hi, value))
        )
    words = ModbusTcpClient.convert_to_registers(value, TYPES[kind], order)  # type: ignore[arg-type]
    field = RegisterField(address=0, type=kind, word_order=order)  # type: ignore[arg-type]
    assert field.width == len(words)
    assert field.decode(words) == pytest.approx(float(value), rel=1e-6)


def test_shipped_maps_load_and_fill_reading_fields_only() -> None:
    maps = load_maps()
    assert {"sdm120", "sdm630", "generic-u32-wh"} <= maps.keys()
    assert set(MAP_FIELDS) <= set(READING_NAMES)
    for m in maps.values():
        blocks = m.blocks()
        covered = {name for b in blocks for name, _ in b.fields}
        assert covered == set(m.fields)
        for b in blocks:
            assert 1 <= b.count <= min(m.max_block, MAX_REGISTERS)
            for name, offset in b.fields:
                f = m.fields[name]  # type: ignore[index]
                assert b.address + offset == f.address and offset + f.width <= b.count


def test_blocks_merge_across_small_gaps_only() -> None:
    fields = {
        "register_kwh": {"address": 100, "type": "float32"},
        "voltage_v": {"address": 0, "type": "float32"},
        "current_a": {"address": 4, "type": "float32"},
    }
    tight = RegisterMap.model_validate(
        {"model": "t", "function": "input", "max_gap": 0, "fields": fields}
    )
    assert [(b.address, b.count) for b in tight.blocks()] == [(0, 2), (4, 2), (100, 2)]
    loose = RegisterMap.model_validate(
        {"model": "t", "function": "input", "max_gap": 120, "fields": fields}
    )
    assert [(b.address, b.count) for b in loose.blocks()] == [(0, 102)]
    capped = RegisterMap.model_validate(
        {"model": "t", "function": "input", "max_gap": 120, "max_block": 50, "fields": fields}
    )
    assert [(b.address, b.count) for b in capped.blocks()] == [(0, 6), (100, 2)]


def _map(function: str, *fields: str) -> str:
    """A map file: ``fields`` as "name address type [extra TOML]"."""
    text = f'model = "x"\nfunction = "{function}"\n'
    for spec in fields:
        name, address, kind, *extra = spec.split(" ", 3)
        text += f'[fields.{name}]\naddress = {address}\ntype = "{kind}"\n'
        text += "".join(f"{e}\n" for e in extra)
    return text


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (_map("input", "voltage_v 0 float32"), "register_kwh"),
        (_map("input", "register_kwh 0 float32", "voltage_v 1 float32"), "overlap"),
        (_map("input", "register_kwh 0 float16"), "type"),
        (_map("coils", "register_kwh 0 uint32"), "function"),
        (_map("input", "register_kwh 65535 uint32"), "65535"),
        (_map("input", "register_kwh 0 uint32 scale = 0"), "scale"),
        (_map("input", "register_kwh 0 uint32", "frequency_hz 4 uint16"), "frequency_hz"),
        (_map("input", "register_kwh 0 uint32", "voltage_v 4 uint16 rollover_kwh = 9"), "rollover"),
        ("model = [unclosed", "register map"),
    ],
)
def test_a_bad_map_file_is_refused_with_its_reason(tmp_path: Path, text: str, reason: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(MapError, match=reason):
        load_map(path)


def test_a_site_map_directory_adds_and_replaces_models(tmp_path: Path) -> None:
    (tmp_path / "mine.toml").write_text(
        'model = "sdm120"\nfunction = "holding"\n[fields.register_kwh]\naddress = 7\n'
        'type = "uint32"\nscale = 0.01\n'
    )
    maps = load_maps(tmp_path)
    assert maps["sdm120"].function == "holding" and "sdm630" in maps
    (tmp_path / "again.toml").write_text((tmp_path / "mine.toml").read_text())
    with pytest.raises(MapError, match="twice"):
        load_maps(tmp_path)
    with pytest.raises(MapError, match="does not exist"):
        load_maps(tmp_path / "nowhere")


# --- against pymodbus's server ----------------------------------------------------------------


def _plausible(values: dict[str, float], meter: SimulatedMeter) -> None:
    assert 200 <= values["voltage_v"] <= 260
    assert 0 <= values["current_a"] <= 100
    assert -1 <= values["power_factor"] <= 1
    for name, expected in meter.values().items():
        # float32: 7 significant digits; integers: the scale; the register grows meanwhile
        step = abs(meter.regmap.fields[name].scale)  # type: ignore[index]
        assert values[name] == pytest.approx(expected, rel=1e-5, abs=max(step, 2e-3)), name


@pytest.mark.parametrize("model", ["sdm630", "sdm120", "generic-u32-wh"])
def test_tcp_reads_every_model_with_plausible_values(model: str) -> None:
    port = free_port()
    meters = fleet(5, model)
    with ModbusPeer(meters, port=port) as peer:
        transport = TcpTransport("127.0.0.1", port, timeout_s=2.0)
        try:
            for m in meters:
                _plausible(read_meter(transport, m.unit, m.regmap, 0), m)
            assert peer.requests == 5 * len(meters[0].regmap.blocks())
        finally:
            transport.close()


def test_tcp_errors_are_errors_and_the_link_recovers() -> None:
    port = free_port()
    meters = fleet(2, "sdm630")
    with ModbusPeer(meters, port=port, silence_s=3.0):
        transport = TcpTransport("127.0.0.1", port, timeout_s=0.5)
        try:
            meters[0].mode = "exception"
            with pytest.raises(ModbusExceptionResponse, match="exception 4"):
                read_meter(transport, 1, meters[0].regmap, 0)
            meters[0].mode = "silent"
            started = time.monotonic()
            with pytest.raises(ModbusTimeout):
                read_meter(transport, 1, meters[0].regmap, 1)  # retried once: two timeouts
            assert 0.9 <= time.monotonic() - started < 2.0
            # the late answer of the abandoned request is never taken for the next one
            _plausible(read_meter(transport, 2, meters[1].regmap, 0), meters[1])
        finally:
            transport.close()
    closed = TcpTransport("127.0.0.1", port, timeout_s=0.5)
    with pytest.raises(ModbusError, match="refused"):
        read_registers(closed, 1, 4, 0, 2)


def _hostile_tcp_server(answer: bytes, *, hold_s: float = 0.0) -> tuple[int, threading.Thread]:
    """A server that answers every request with ``answer`` (then holds the line)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(5)
    port = srv.getsockname()[1]

    def serve() -> None:
        srv.settimeout(10)
        try:
            conn, _ = srv.accept()
        except OSError:
            return
        with conn, srv:
            conn.recv(256)
            conn.sendall(answer)
            if answer:  # an empty answer hangs up at once
                time.sleep(hold_s)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return port, thread


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (b"", "closed"),  # hangs up
        (struct.pack(">HHHB", 1, 7, 7, 1) + bytes([4, 4, 0, 0, 0, 0]), "protocol"),
        (struct.pack(">HHHB", 1, 0, 0, 1), "length"),
        (struct.pack(">HHHB", 99, 0, 7, 1) + bytes([4, 4, 0, 0, 0, 0]), "transaction"),
        (struct.pack(">HHHB", 1, 0, 7, 9) + bytes([4, 4, 0, 0, 0, 0]), "unit"),
        (struct.pack(">HHHB", 1, 0, 5, 1) + bytes([4, 2, 0, 0]), "bytes"),  # 1 register, not 2
        (struct.pack(">HHHB", 1, 0, 7, 1) + bytes([3, 4, 0, 0, 0, 0]), "another function"),
        (struct.pack(">HHHB", 1, 0, 3, 1) + bytes([0x84, 2]), "illegal data address"),
        (struct.pack(">HHHB", 1, 0, 200, 1) + bytes(20), "no complete answer"),  # promises more
    ],
)
def test_a_hostile_tcp_answer_is_an_error_not_a_value(answer: bytes, error: str) -> None:
    port, thread = _hostile_tcp_server(answer, hold_s=1.0)
    transport = TcpTransport("127.0.0.1", port, timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(ModbusError, match=error):
        read_registers(transport, 1, 4, 0, 2)
    assert time.monotonic() - started < 1.0  # bounded by the timeout, never a hang
    transport.close()
    thread.join(5)


# --- RTU over a serial line -------------------------------------------------------------------


def test_rtu_reads_many_meters_on_one_line_one_request_at_a_time(
    pty_pair: tuple[str, str],
) -> None:
    server_end, client_end = pty_pair
    meters = fleet(6, "sdm120")
    with ModbusPeer(meters, serial=server_end, baudrate=9600, silence_s=2.0):
        transport = RtuTransport(client_end, 9600, timeout_s=0.5)
        try:
            failures: list[BaseException] = []

            def poll_all() -> None:
                try:
                    for m in meters:  # no retry: an interleaved frame would fail here
                        _plausible(read_meter(transport, m.unit, m.regmap, 0), m)
                except BaseException as exc:  # noqa: BLE001 - reported below
                    failures.append(exc)

            # two threads share the line: the transport sends one request at a time
            threads = [threading.Thread(target=poll_all) for _ in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            assert not failures, failures
            meters[2].mode = "silent"
            with pytest.raises(ModbusTimeout):
                read_meter(transport, 3, meters[2].regmap, 0)
            _plausible(read_meter(transport, 4, meters[3].regmap, 0), meters[3])
        finally:
            transport.close()


def test_rtu_refuses_a_corrupt_frame_and_a_stranger(pty_pair: tuple[str, str]) -> None:
    server_end, client_end = pty_pair
    fd = os.open(server_end, os.O_RDWR | os.O_NOCTTY)
    transport = RtuTransport(client_end, 19200, timeout_s=0.5)
    try:
        good = bytes([1, 4, 4, 0x43, 0x66, 0, 0])

        def answer(frame: bytes) -> None:
            def run() -> None:
                time.sleep(0.05)
                os.read(fd, 256)
                os.write(fd, frame)

            threading.Thread(target=run, daemon=True).start()

        answer(good + struct.pack("<H", crc16(good)))
        regs = read_registers(transport, 1, 4, 0, 2)
        assert struct.unpack(">f", struct.pack(">2H", *regs))[0] == pytest.approx(230.0)
        answer(good + struct.pack("<H", crc16(good) ^ 1))
        with pytest.raises(ModbusError, match="CRC"):
            read_registers(transport, 1, 4, 0, 2)
        stranger = bytes([7]) + good[1:]
        answer(stranger + struct.pack("<H", crc16(stranger)))
        with pytest.raises(ModbusError, match="unit 7"):
            read_registers(transport, 1, 4, 0, 2)
        answer(bytes([1, 4, 200]) + bytes(10))  # promises 200 bytes, sends 10
        with pytest.raises(ModbusTimeout):
            read_registers(transport, 1, 4, 0, 2)
    finally:
        transport.close()
        os.close(fd)


def test_a_port_that_does_not_exist_or_is_no_serial_port_is_an_error(tmp_path: Path) -> None:
    transport = RtuTransport(str(tmp_path / "ttyUSB9"), 9600, timeout_s=0.2)
    with pytest.raises(ModbusError, match="ttyUSB9"):
        read_registers(transport, 1, 4, 0, 2)
    (tmp_path / "file").write_text("")
    with pytest.raises(ModbusError, match="not a serial port"):
        read_registers(RtuTransport(str(tmp_path / "file"), 9600, timeout_s=0.2), 1, 4, 0, 2)


def test_an_unplugged_rtu_adapter_is_an_error_and_the_line_comes_back(tmp_path: Path) -> None:
    a, b = tmp_path / "ttyA", tmp_path / "ttyB"

    def line() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            ["socat", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not (a.exists() and b.exists()):
            assert time.monotonic() < deadline, "socat made no pty pair"
            time.sleep(0.05)
        return proc

    meters = fleet(2, "sdm120")
    transport = RtuTransport(str(b), 9600, timeout_s=0.5)
    socat = line()
    try:
        with ModbusPeer(meters, serial=str(a)):
            _plausible(read_meter(transport, 1, meters[0].regmap, 0), meters[0])
        socat.terminate()  # the USB adapter is pulled out
        socat.wait(10)
        with pytest.raises(ModbusError):
            read_meter(transport, 1, meters[0].regmap, 0)
        socat = line()  # ... and plugged in again: the transport opens the port anew
        with ModbusPeer(meters, serial=str(a)):
            _plausible(read_meter(transport, 2, meters[1].regmap, 1), meters[1])
    finally:
        transport.close()
        socat.terminate()
        socat.wait(10)
