"""The agent's DLMS/COSEM client and the project's test meter, each checked against gurux-dlms's
client (an implementation that shares nothing with either), and against hostile meters."""

from __future__ import annotations

import socket
import struct
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from gurux_dlms import GXByteBuffer, GXDLMSClient, GXReplyData
from gurux_dlms.enums import Authentication, Conformance, InterfaceType
from gurux_dlms.objects import GXDLMSClock, GXDLMSProfileGeneric, GXDLMSRegister
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.meters import axdr
from edge_agent.meters.axdr import Typed
from edge_agent.meters.dlms import (
    AssociationRefused,
    DlmsClient,
    DlmsError,
    aarq,
)
from simulator.dlms_meter import DlmsMeter, DlmsPeer

PASSWORD = b"12345678"


def _meter(**kw: object) -> DlmsMeter:
    # four days of history, three in memory
    return DlmsMeter(kw=2.0, start_kwh=1000.0, memory_days=3, history_s=4 * 86400, **kw)  # type: ignore[arg-type]


# --- A-XDR ------------------------------------------------------------------------------------

_scalar = st.one_of(
    st.integers(-(2**31), 2**31 - 1).map(lambda v: Typed(axdr.INT32, v)),
    st.integers(0, 2**32 - 1).map(lambda v: Typed(axdr.UINT32, v)),
    st.integers(0, 255).map(lambda v: Typed(axdr.UINT8, v)),
    st.integers(-(2**15), 2**15 - 1).map(lambda v: Typed(axdr.INT16, v)),
    st.integers(0, 2**64 - 1).map(lambda v: Typed(axdr.UINT64, v)),
    st.binary(max_size=300),
    st.none(),
    st.booleans(),
)
_data = st.recursive(_scalar, lambda inner: st.lists(inner, max_size=5), max_leaves=30)


def _plain(value: object) -> object:
    if isinstance(value, Typed):
        return _plain(value.value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


@settings(max_examples=300, deadline=None)
@given(_data)
def test_axdr_round_trips(value: object) -> None:
    assert axdr.decode_all(axdr.encode(value)) == _plain(value)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=200))
def test_axdr_garbage_is_an_error_never_a_crash(data: bytes) -> None:
    try:
        axdr.decode_all(data)
    except axdr.AxdrError:
        pass


def test_axdr_refuses_lengths_beyond_the_data_and_deep_nesting() -> None:
    with pytest.raises(axdr.AxdrError, match="elements announced"):
        axdr.decode_all(bytes([axdr.ARRAY, 0x84, 0x7F, 0xFF, 0xFF, 0xFF]))
    with pytest.raises(axdr.AxdrError, match="bytes wanted"):
        axdr.decode_all(bytes([axdr.OCTET_STRING, 0x82, 0xFF, 0xFF, 1, 2]))
    with pytest.raises(axdr.AxdrError, match="too deep"):
        axdr.decode_all(bytes([axdr.STRUCTURE, 1] * 20 + [0]))


@pytest.mark.parametrize("deviation", [0, -60, -180, 120])
def test_datetime_round_trips_with_its_deviation(deviation: int) -> None:
    when = datetime(2026, 3, 29, 1, 15, 0, tzinfo=UTC)
    raw = axdr.encode_datetime(when, deviation)
    assert axdr.decode_datetime(raw)[0] == when
    # local time on the wire: UTC+1 (deviation -60) shows 02:15
    assert raw[5] == (when - timedelta(minutes=deviation)).hour


def test_a_partial_datetime_is_refused() -> None:
    raw = bytearray(axdr.encode_datetime(datetime(2026, 3, 1, tzinfo=UTC)))
    raw[5] = 0xFF  # hour not specified
    with pytest.raises(axdr.AxdrError, match="not fully specified"):
        axdr.decode_datetime(bytes(raw))
    with pytest.raises(axdr.AxdrError, match="12 bytes"):
        axdr.decode_datetime(b"\x07\xea")


# --- against gurux-dlms -----------------------------------------------------------------------


def _gurux(password: bytes | None) -> GXDLMSClient:
    auth = Authentication.LOW if password else Authentication.NONE
    c = GXDLMSClient(True, 16, 1, auth, password.decode() if password else None,
                     InterfaceType.WRAPPER)  # fmt: skip
    return c


@pytest.mark.parametrize("password", [None, PASSWORD])
def test_our_aarq_is_the_one_gurux_builds(password: bytes | None) -> None:
    g = _gurux(password)
    g.proposedConformance = (
        Conformance.BLOCK_TRANSFER_WITH_GET_OR_READ | Conformance.GET | Conformance.SELECTIVE_ACCESS
    )
    g.maxReceivePDUSize = 1024
    frame = bytes(g.aarqRequest()[0])
    assert frame[8:] == aarq(password, 1024)


def _exchange(sock: socket.socket, client: GXDLMSClient, frames: list[bytes]) -> GXReplyData:
    reply = GXReplyData()

    def one(frame: bytes) -> None:
        sock.sendall(bytes(frame))
        header = _recv(sock, 8)
        body = _recv(sock, int.from_bytes(header[6:8], "big"))
        client.getData(GXByteBuffer(header + body), reply, GXReplyData())

    for f in frames:
        one(f)
    while reply.isMoreData():
        one(client.receiverReady(reply))
    return reply


def _recv(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, "meter hung up"
        data += chunk
    return data


def test_gurux_reads_our_test_meter() -> None:
    meter = _meter(password=PASSWORD)
    with (
        DlmsPeer([meter], [0]) as peer,
        socket.create_connection(("127.0.0.1", peer.ports[0])) as s,
    ):
        s.settimeout(5)
        g = _gurux(PASSWORD)
        g.parseAareResponse(_exchange(s, g, g.aarqRequest()).data)
        clock = GXDLMSClock("0.0.1.0.0.255")
        g.updateValue(clock, 2, _exchange(s, g, g.read(clock, 2)).value)
        assert abs(clock.time.value.timestamp() - meter.now()) < 5
        reg = GXDLMSRegister("1.0.1.8.0.255")
        g.updateValue(reg, 3, _exchange(s, g, g.read(reg, 3)).value)
        g.updateValue(reg, 2, _exchange(s, g, g.read(reg, 2)).value)
        assert (reg.scaler, int(reg.unit)) == (1.0, 30)
        assert reg.value == pytest.approx(meter.register_wh(meter.now()), abs=5)
        profile = GXDLMSProfileGeneric("1.0.99.1.0.255")
        g.updateValue(profile, 3, _exchange(s, g, g.read(profile, 3)).value)
        assert [(int(o.objectType), o.logicalName) for o, _ in profile.captureObjects] == [
            (8, "0.0.1.0.0.255"),
            (3, "1.0.1.8.0.255"),
        ]
        end = datetime.fromtimestamp(meter.now(), UTC)
        frames = g.readRowsByRange(profile, end - timedelta(hours=6), end)
        g.updateValue(profile, 2, _exchange(s, g, frames).value)
        rows = profile.buffer
        assert 24 <= len(rows) <= 25
        for stamp, wh in rows:
            t = stamp.value.timestamp()
            assert t % 900 == 0 and wh == meter.register_wh(t)
        # the whole profile: three days, far beyond one PDU (block transfer)
        profile.buffer.clear()  # gurux appends what it reads
        g.updateValue(profile, 2, _exchange(s, g, g.read(profile, 2)).value)
        assert len(profile.buffer) == pytest.approx(3 * 96, abs=1)
        _exchange(s, g, g.releaseRequest())


def test_gurux_is_refused_with_a_wrong_password() -> None:
    with DlmsPeer([_meter(password=PASSWORD)], [0]) as peer:
        with socket.create_connection(("127.0.0.1", peer.ports[0])) as s:
            s.settimeout(5)
            g = _gurux(b"wrong-pw")
            with pytest.raises(Exception, match="(?i)authentication|denied|rejected"):
                g.parseAareResponse(_exchange(s, g, g.aarqRequest()).data)


# --- our client -------------------------------------------------------------------------------


def test_our_client_reads_clock_register_and_profile_in_blocks() -> None:
    meter = _meter(password=PASSWORD)
    with DlmsPeer([meter], [0]) as peer:
        with DlmsClient("127.0.0.1", peer.ports[0], password=PASSWORD, timeout_s=5) as c:
            assert c.server_max_pdu == 512
            assert abs(c.clock().timestamp() - meter.now()) < 5
            assert c.energy_kwh() == pytest.approx(meter.register_wh(meter.now()) / 1000, abs=0.01)
            assert c.capture_objects() == [(8, "0.0.1.0.0.255", 2), (3, "1.0.1.8.0.255", 2)]
            end = datetime.fromtimestamp(meter.now(), UTC)
            day = c.profile(end - timedelta(days=1), end)
            assert len(day) in (96, 97)
            for stamp, wh in day:
                t = axdr.decode_datetime(stamp)[0].timestamp()
                assert wh == meter.register_wh(t)
            assert len(c.profile(end - timedelta(days=30), end)) == pytest.approx(3 * 96, abs=1)
        with pytest.raises(DlmsError, match="longer than 3 blocks"):
            with DlmsClient("127.0.0.1", peer.ports[0], password=PASSWORD, max_blocks=3) as c:
                c.profile(end - timedelta(days=30), end)
        with pytest.raises(AssociationRefused, match="diagnostic 13"):
            DlmsClient("127.0.0.1", peer.ports[0], password=b"guess").associate()
        with pytest.raises(AssociationRefused):
            DlmsClient("127.0.0.1", peer.ports[0]).associate()  # no password at all


def test_a_silent_meter_is_an_error_within_the_timeout() -> None:
    meter = _meter()
    meter.mode = "silent"
    with DlmsPeer([meter], [0]) as peer:
        client = DlmsClient("127.0.0.1", peer.ports[0], timeout_s=0.5)
        started = time.monotonic()
        with pytest.raises(DlmsError, match="no answer"):
            client.associate()
        assert time.monotonic() - started < 1.5


def _hostile(answer: bytes) -> int:
    srv = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        srv.settimeout(10)
        with srv:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                conn.recv(1024)
                conn.sendall(answer)
                if answer:  # an empty answer hangs up at once
                    time.sleep(1.0)

    threading.Thread(target=serve, daemon=True).start()
    return int(srv.getsockname()[1])


def _wrapped(apdu: bytes, version: int = 1, src: int = 1, dst: int = 16) -> bytes:
    return struct.pack(">HHHH", version, src, dst, len(apdu)) + apdu


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (_wrapped(b"\x61\x00", version=2), "WRAPPER header"),
        (_wrapped(b"\x61\x00", src=7), "WRAPPER header"),
        (struct.pack(">HHHH", 1, 1, 16, 60000) + b"\x61", "no answer"),  # promises 60 kB
        (_wrapped(b"\x62\x00"), "not an AARE"),
        (_wrapped(b"\x61\x03\xa2\x01\x00"), "without a result"),
        (_wrapped(b"\x61\x05\xa2\x03\x02\x01\x00"), "user-information"),
        (_wrapped(b"\x61\x84\xff\xff\xff\xff"), "bytes wanted"),
        (b"", "closed"),
    ],
)
def test_a_hostile_meter_is_an_error_not_a_value(answer: bytes, error: str) -> None:
    client = DlmsClient("127.0.0.1", _hostile(answer), timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(DlmsError, match=error):
        client.associate()
    assert time.monotonic() - started < 1.5
    client.close()
