"""The PROXY protocol header (v1 and v2): the parser, and the engine's PROXY state before the
greeting. Every engine test feeds raw bytes, whole and one byte at a time."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from helpers import FEEDERS, drain, receive_and_get, receive_pieces
from hypothesis import given, settings
from hypothesis import strategies as st

from smtp_core import (
    PAUSED,
    Closed,
    CloseReason,
    Config,
    Connected,
    Hello,
    LocalProtocolError,
    ProxyCommand,
    ProxyError,
    ProxyHeader,
    ServerConnection,
    State,
    parse_proxy_header,
)
from smtp_core._proxy import MAX_V1_HEADER, MAX_V2_HEADER

SETTINGS = settings(deadline=None, max_examples=300)
PROXIED = Config(hostname="mx.example.org", proxy_protocol=True)
#: The proxy's own address: what the transport sees.
PROXY_PEER = ("10.0.0.5", 41000)
SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"

V1 = b"PROXY TCP4 192.0.2.7 198.51.100.1 40312 25\r\n"


def v2(
    command: int = 1,
    family: int = 1,
    transport: int = 1,
    addresses: bytes = b"",
    tlvs: bytes = b"",
    version: int = 2,
    length: int | None = None,
) -> bytes:
    body = addresses + tlvs
    size = len(body) if length is None else length
    return (
        SIGNATURE
        + bytes([version << 4 | command, family << 4 | transport])
        + struct.pack("!H", size)
        + body
    )


def inet(src: str, dst: str, sport: int, dport: int) -> bytes:
    return (
        ipaddress.ip_address(src).packed
        + ipaddress.ip_address(dst).packed
        + struct.pack("!HH", sport, dport)
    )


V2 = v2(addresses=inet("192.0.2.7", "198.51.100.1", 40312, 25))
V2_SIX = v2(family=2, addresses=inet("2001:db8::7", "2001:db8::1", 40312, 25))


# ------------------------------------------------------------------------------ the parser


@pytest.mark.parametrize(
    ("data", "version", "source", "destination"),
    [
        (V1, 1, ("192.0.2.7", 40312), ("198.51.100.1", 25)),
        (
            b"PROXY TCP6 2001:DB8::7 2001:db8::1 65535 0\r\n",
            1,
            ("2001:db8::7", 65535),
            ("2001:db8::1", 0),
        ),
        (V2, 2, ("192.0.2.7", 40312), ("198.51.100.1", 25)),
        (V2_SIX, 2, ("2001:db8::7", 40312), ("2001:db8::1", 25)),
        # TLVs after the addresses are skipped (HAProxy's unique ID, AWS's VPC endpoint...)
        (
            v2(addresses=inet("192.0.2.7", "198.51.100.1", 1, 2), tlvs=b"\x05\x00\x03abc"),
            2,
            ("192.0.2.7", 1),
            ("198.51.100.1", 2),
        ),
    ],
)
def test_a_header_names_the_client_and_where_it_connected(
    data: bytes, version: int, source: tuple[str, int], destination: tuple[str, int]
) -> None:
    header = parse_proxy_header(data + b"EHLO client.example\r\n")
    assert header == ProxyHeader(
        version=version,
        command=ProxyCommand.PROXY,
        source=source,
        destination=destination,
        length=len(data),
    )


@pytest.mark.parametrize(
    ("data", "command"),
    [
        (b"PROXY UNKNOWN\r\n", ProxyCommand.LOCAL),
        (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", ProxyCommand.LOCAL),
        (v2(command=0, family=0, transport=0), ProxyCommand.LOCAL),  # a health check
        (v2(command=0, addresses=inet("192.0.2.7", "198.51.100.1", 1, 2)), ProxyCommand.LOCAL),
        (v2(family=0, transport=0), ProxyCommand.PROXY),  # UNSPEC: the proxy cannot say
        (v2(family=3, addresses=b"/tmp/a".ljust(216, b"\0")), ProxyCommand.PROXY),  # UNIX
    ],
)
def test_a_header_without_a_usable_address_keeps_the_connection_s_own(
    data: bytes, command: ProxyCommand
) -> None:
    header = parse_proxy_header(data)
    assert isinstance(header, ProxyHeader)
    assert (header.command, header.source, header.destination) == (command, None, None)
    assert header.length == len(data)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"EHLO client.example\r\n", ProxyError.MISSING),
        (b"\x16\x03\x01\x02\x00\x01", ProxyError.MISSING),  # a TLS ClientHello
        (b"\r\n\r\nX", ProxyError.MISSING),
        (b"PROXY TCP4 192.0.2.7 198.51.100.1 40312 25\n", ProxyError.MALFORMED),  # bare LF
        (b"PROXY TCP4 192.0.2.7 198.51.100.1 40312 25 \r\n", ProxyError.MALFORMED),
        (b"PROXY TCP4 192.0.2.777 198.51.100.1 40312 25\r\n", ProxyError.MALFORMED),
        (b"PROXY TCP4 192.0.2.07 198.51.100.1 40312 25\r\n", ProxyError.MALFORMED),
        (b"PROXY TCP4 2001:db8::7 198.51.100.1 40312 25\r\n", ProxyError.MALFORMED),
        (b"PROXY TCP6 192.0.2.7 2001:db8::1 40312 25\r\n", ProxyError.MALFORMED),
        (b"PROXY TCP4 192.0.2.7 198.51.100.1 65536 25\r\n", ProxyError.MALFORMED),
        (b"PROXY TCP4 192.0.2.7 198.51.100.1 040312 25\r\n", ProxyError.MALFORMED),
        (b"PROXY TCP4 192.0.2.7 198.51.100.1 40312\r\n", ProxyError.MALFORMED),
        (b"PROXY UDP4 192.0.2.7 198.51.100.1 40312 25\r\n", ProxyError.MALFORMED),
        (b"PROXY UNKNOWN\x00\r\n", ProxyError.MALFORMED),
        (b"PROXY " + b"x" * (MAX_V1_HEADER - 6), ProxyError.TOO_LONG),  # no CRLF in 107
        (b"PROXY UNKNOWN " + b"x" * (MAX_V1_HEADER - 15) + b"\r\n", ProxyError.TOO_LONG),
        (v2(version=1), ProxyError.MALFORMED),
        (v2(command=2), ProxyError.MALFORMED),
        (v2(family=4), ProxyError.MALFORMED),
        (v2(transport=3), ProxyError.MALFORMED),
        (v2(transport=2, addresses=inet("192.0.2.7", "1.2.3.4", 1, 2)), ProxyError.MALFORMED),
        (v2(addresses=b"\0" * 11), ProxyError.MALFORMED),  # INET needs 12 octets
        (v2(family=2, addresses=b"\0" * 35), ProxyError.MALFORMED),  # INET6 needs 36
        (v2(length=MAX_V2_HEADER - 15), ProxyError.TOO_LONG),  # said so before it arrives
        (v2(length=0xFFFF), ProxyError.TOO_LONG),
    ],
)
def test_what_is_not_an_acceptable_header(data: bytes, error: ProxyError) -> None:
    assert parse_proxy_header(data) is error


def test_the_longest_headers_accepted() -> None:
    v1 = b"PROXY UNKNOWN " + b"x" * (MAX_V1_HEADER - 16) + b"\r\n"
    assert len(v1) == MAX_V1_HEADER
    assert isinstance(parse_proxy_header(v1), ProxyHeader)
    longest = v2(addresses=inet("192.0.2.7", "1.2.3.4", 1, 2), tlvs=b"\0" * (MAX_V2_HEADER - 28))
    assert len(longest) == MAX_V2_HEADER
    assert isinstance(parse_proxy_header(longest), ProxyHeader)


@pytest.mark.parametrize("data", [V1, V2, V2_SIX, b"PROXY UNKNOWN\r\n"])
def test_no_prefix_of_a_header_is_decided(data: bytes) -> None:
    for end in range(len(data)):
        assert parse_proxy_header(data[:end]) is None, data[:end]


# ------------------------------------------------------------------------------ the engine


def proxied(config: Config = PROXIED, *, tls: bool = False) -> ServerConnection:
    return ServerConnection(config, peer=PROXY_PEER, tls=tls)


@pytest.mark.parametrize("feed", FEEDERS)
@pytest.mark.parametrize("header", [V1, V2], ids=["v1", "v2"])
def test_the_client_behind_the_proxy_is_the_peer(feed: str, header: bytes) -> None:
    conn = proxied()
    assert conn.state is State.PROXY
    events, wire = FEEDERS[feed](conn, header + b"EHLO client.example\r\nQUIT\r\n")
    assert events[:2] == [
        Connected(peer=("192.0.2.7", 40312)),
        Hello(hostname="client.example", extended=True),
    ]
    assert conn.peer == ("192.0.2.7", 40312)
    assert conn.server_address == ("198.51.100.1", 25)
    assert conn.proxy_header is not None
    assert conn.proxy_header.version == (1 if header.startswith(b"PROXY") else 2)
    assert wire.startswith(b"220 mx.example.org ESMTP smtpkit\r\n250-mx.example.org\r\n")
    assert wire.endswith(b"221 2.0.0 Bye\r\n")


def test_nothing_is_said_before_the_header() -> None:
    conn = proxied()
    events, wire = receive_and_get(conn, V1[:-1])
    assert (events, wire, conn.state) == ([], b"", State.PROXY)
    events, wire = receive_and_get(conn, V1[-1:])
    assert events == [Connected(peer=("192.0.2.7", 40312))]
    assert wire == b"220 mx.example.org ESMTP smtpkit\r\n"


@pytest.mark.parametrize("feed", FEEDERS)
@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"EHLO client.example\r\n", ProxyError.MISSING),
        (b"PROXY TCP4 nobody 198.51.100.1 1 25\r\nEHLO client.example\r\n", ProxyError.MALFORMED),
        (b"PROXY " + b"1" * 200 + b"\r\n", ProxyError.TOO_LONG),
        (v2(length=4000) + b"\0" * 4000, ProxyError.TOO_LONG),
    ],
)
def test_a_bad_header_closes_without_a_word(feed: str, data: bytes, error: ProxyError) -> None:
    conn = proxied()
    events, wire = FEEDERS[feed](conn, data)
    assert events == [Closed(reason=CloseReason.PROXY)]
    assert wire == b""
    assert conn.proxy_error is error
    assert conn.peer == PROXY_PEER  # nobody was named


def test_eof_before_the_header_ends_quietly() -> None:
    conn = proxied()
    conn.receive_data(V2[:10])
    conn.receive_data(b"")
    assert drain(conn) == ([Closed(reason=CloseReason.EOF)], b"")


@pytest.mark.parametrize("header", [b"PROXY UNKNOWN\r\n", v2(command=0, family=0, transport=0)])
def test_a_health_check_keeps_the_proxy_s_own_address(header: bytes) -> None:
    conn = proxied()
    events, _ = receive_and_get(conn, header + b"QUIT\r\n")
    assert events[0] == Connected(peer=PROXY_PEER)
    assert conn.server_address is None


def test_without_proxy_protocol_a_header_is_an_unknown_command() -> None:
    conn = ServerConnection(Config(), peer=PROXY_PEER)
    events, wire = receive_and_get(conn, V1)
    assert events == [Connected(peer=PROXY_PEER)]
    assert wire.endswith(b"500 5.5.2 Error: command not recognized\r\n")


# ----------------------------------------------------------- implicit TLS behind a proxy


def test_smtps_behind_a_proxy_hands_the_handshake_its_bytes() -> None:
    conn = proxied(tls=True)
    hello = b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03"  # the start of a ClientHello
    conn.receive_data(V2 + hello)
    assert conn.next_event() is PAUSED
    assert conn.state is State.HANDSHAKE
    assert conn.peer == ("192.0.2.7", 40312)
    assert conn.trailing_data == hello
    assert not conn.tls_active
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"more of the handshake")
    assert conn.next_event() is PAUSED
    conn.tls_started()
    assert conn.trailing_data == b""
    assert conn.tls_active
    assert conn.next_event() == Connected(peer=("192.0.2.7", 40312))
    _, wire = receive_and_get(conn, b"EHLO client.example\r\n")
    assert b"STARTTLS" not in wire


def test_smtps_behind_a_proxy_peer_gone_during_the_handshake() -> None:
    conn = proxied(tls=True)
    conn.receive_data(V1)
    assert conn.next_event() is PAUSED
    conn.receive_data(b"")
    assert conn.next_event() == Closed(reason=CloseReason.EOF)


def test_tls_started_before_the_header_is_a_misuse() -> None:
    conn = proxied(tls=True)
    with pytest.raises(LocalProtocolError):
        conn.tls_started()


# -------------------------------------------------------------------------------- fuzzing


def outcome(data: bytes) -> object:
    """What the parser says of `data`, and what the engine does with it, fed whole."""
    conn = proxied()
    if data:  # b"" would be EOF
        conn.receive_data(data)
    events, wire = drain(conn)
    return parse_proxy_header(data), events, wire, conn.peer


@SETTINGS
@given(st.binary(max_size=700))
def test_random_bytes_never_raise(data: bytes) -> None:
    result = parse_proxy_header(data)
    assert result is None or isinstance(result, (ProxyHeader, ProxyError))
    outcome(data)


@SETTINGS
@given(
    st.one_of(
        st.binary(max_size=200),
        st.builds(lambda tail: b"PROXY " + tail, st.binary(max_size=120)),
        st.builds(lambda tail: SIGNATURE + tail, st.binary(max_size=120)),
    ),
    st.data(),
)
def test_any_split_gives_the_same_result(data: bytes, draw: st.DataObject) -> None:
    """The first decided result over growing prefixes is the whole input's, and the engine's
    events and output do not depend on where the input was split."""
    whole = parse_proxy_header(data)
    first = next(
        (r for end in range(len(data) + 1) if (r := parse_proxy_header(data[:end])) is not None),
        None,
    )
    assert first == whole
    cuts = sorted(draw.draw(st.sets(st.integers(0, len(data)), max_size=6)))
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    conn = proxied()
    events, out = receive_pieces(conn, pieces)
    _, whole_events, whole_wire, peer = outcome(data)
    assert (events, out, conn.peer) == (whole_events, whole_wire, peer)


ADDRESSES = st.one_of(
    st.tuples(st.just(1), st.ip_addresses(v=4), st.ip_addresses(v=4)),
    st.tuples(st.just(2), st.ip_addresses(v=6), st.ip_addresses(v=6)),
)
PORTS = st.integers(0, 65535)


@SETTINGS
@given(ADDRESSES, PORTS, PORTS, st.booleans(), st.binary(max_size=40))
def test_every_valid_header_reads_back(
    family: tuple[int, object, object], sport: int, dport: int, text: bool, tail: bytes
) -> None:
    kind, src, dst = family
    assert isinstance(src, ipaddress.IPv4Address | ipaddress.IPv6Address)
    assert isinstance(dst, ipaddress.IPv4Address | ipaddress.IPv6Address)
    if text:
        header = f"PROXY TCP{4 if kind == 1 else 6} {src} {dst} {sport} {dport}\r\n".encode()
    else:
        header = v2(family=kind, addresses=inet(str(src), str(dst), sport, dport))
    assert parse_proxy_header(header + tail) == ProxyHeader(
        version=1 if text else 2,
        command=ProxyCommand.PROXY,
        source=(str(src), sport),
        destination=(str(dst), dport),
        length=len(header),
    )
