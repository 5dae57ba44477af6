"""XCLIENT (Postfix's XCLIENT_README) with raw bytes: who may send it, what each attribute
changes, and the restart at the greeting. Each exchange is fed whole and byte by byte."""

from __future__ import annotations

import pytest
from helpers import FEEDERS, accept_all, drain, receive_and_get, reject
from hypothesis import given, settings
from hypothesis import strategies as st

from smtp_core import (
    PAUSED,
    Config,
    Connected,
    Hello,
    MailFrom,
    MailParams,
    Reject,
    ServerConnection,
    State,
)

TRUSTED = Config(hostname="mx.example.org", xclient_trusted=("10.0.0.0/8", "2001:db8::/32"))
FILTER = ("10.1.2.3", 50000)  # a content filter, trusted
STRANGER = ("192.0.2.99", 50000)
ATTRIBUTES = b"XCLIENT NAME ADDR PORT PROTO HELO LOGIN DESTADDR DESTPORT"
GREETING = b"220 mx.example.org ESMTP smtpkit\r\n"


def greeted(peer: tuple[str, int] = FILTER, config: Config = TRUSTED) -> ServerConnection:
    conn = ServerConnection(config, peer=peer)
    events, wire = drain(conn)
    assert events == [Connected(peer=peer)] and wire == GREETING
    return conn


@pytest.mark.parametrize(
    ("peer", "offered"), [(FILTER, True), (("2001:db8:1::5", 1), True), (STRANGER, False)]
)
def test_xclient_is_offered_to_trusted_clients_only(peer: tuple[str, int], offered: bool) -> None:
    conn = greeted(peer)
    assert conn.xclient_offered is offered
    _, wire = receive_and_get(conn, b"EHLO filter.example\r\nHELP\r\n")
    assert (ATTRIBUTES in wire) is offered
    assert (b" XCLIENT" in wire.split(b"214 2.0.0 Commands:")[1]) is offered


@pytest.mark.parametrize("feed", FEEDERS)
def test_an_untrusted_client_gets_550(feed: str) -> None:
    conn = greeted(STRANGER)
    events, wire = FEEDERS[feed](conn, b"XCLIENT ADDR=192.0.2.1\r\n")
    assert events == []
    assert wire == b"550 5.7.0 Error: insufficient authorization\r\n"
    assert conn.peer == STRANGER


def test_without_trusted_networks_xclient_is_unknown() -> None:
    conn = greeted(FILTER, Config(hostname="mx.example.org"))
    _, wire = receive_and_get(conn, b"XCLIENT ADDR=192.0.2.1\r\n")
    assert wire == b"500 5.5.2 Error: command not recognized\r\n"


@pytest.mark.parametrize("feed", FEEDERS)
def test_xclient_restarts_the_session_as_the_client_it_names(feed: str) -> None:
    conn = greeted()
    data = (
        b"EHLO filter.example\r\n"
        b"XCLIENT NAME=mail.client.example ADDR=192.0.2.7 PORT=40312\r\n"
        b"EHLO client.example\r\n"
        b"MAIL FROM:<a@client.example>\r\n"
    )
    events, wire = FEEDERS[feed](conn, data)
    assert events == [
        Hello(hostname="filter.example", extended=True),
        Connected(peer=("192.0.2.7", 40312)),
        Hello(hostname="client.example", extended=True),
        MailFrom(sender="a@client.example", params=MailParams()),
    ]
    replies = wire.split(b"\r\n")
    assert replies.count(b"220 mx.example.org ESMTP smtpkit") == 1  # the new greeting
    assert wire.endswith(b"250 2.1.0 Ok\r\n")
    assert conn.peer == ("192.0.2.7", 40312)
    assert conn.client_name == "mail.client.example"
    assert conn.helo_name == "client.example"


def test_nothing_is_read_past_xclient_until_the_new_client_is_welcomed() -> None:
    conn = greeted()
    conn.receive_data(b"XCLIENT ADDR=192.0.2.7\r\nNOOP\r\n")
    event = conn.next_event()
    assert event == Connected(peer=("192.0.2.7", 50000))
    assert conn.next_event() is PAUSED
    assert conn.data_to_send() == b""
    conn.send(Reject())  # the new client is refused, as Postfix's access rules may
    events, wire = drain(conn)
    assert events == []
    assert wire == (
        b"554 mx.example.org Error: service refused\r\n"
        b"503 5.5.1 Error: access denied, send QUIT\r\n"
    )
    assert conn.state is State.REFUSED


def test_helo_proto_and_login_stand_after_the_restart() -> None:
    conn = greeted()
    events, wire = receive_and_get(
        conn,
        b"XCLIENT HELO=client.example PROTO=ESMTP LOGIN=alice+40example.org\r\n"
        b"MAIL FROM:<a@client.example> SIZE=100\r\n",  # no EHLO needed; SIZE is ESMTP's
    )
    assert events == [
        Connected(peer=FILTER),
        MailFrom(sender="a@client.example", params=MailParams(size=100)),
    ]
    assert wire == GREETING + b"250 2.1.0 Ok\r\n"
    assert conn.helo_name == "client.example" and conn.esmtp
    assert conn.authenticated_user == "alice@example.org"
    assert conn.state is State.MAIL


def test_the_old_session_is_forgotten() -> None:
    conn = greeted()
    receive_and_get(conn, b"EHLO filter.example\r\nXCLIENT NAME=x.example\r\n")
    assert conn.helo_name is None and not conn.esmtp
    _, wire = receive_and_get(conn, b"MAIL FROM:<a@client.example>\r\n")
    assert wire == b"503 5.5.1 Error: send HELO/EHLO first\r\n"


@pytest.mark.parametrize(
    ("attributes", "peer", "server", "name"),
    [
        (b"ADDR=IPV6:2001:DB8::7 PORT=25", ("2001:db8::7", 25), None, None),
        (b"addr=ipv6:2001:db8::7", ("2001:db8::7", 50000), None, None),
        (b"ADDR=[UNAVAILABLE] NAME=[TEMPUNAVAIL]", None, None, None),
        (b"NAME=[unavailable]", FILTER, None, None),
        (
            b"DESTADDR=198.51.100.1 DESTPORT=587 NAME=c.example",
            FILTER,
            ("198.51.100.1", 587),
            "c.example",
        ),
    ],
)
def test_each_attribute(
    attributes: bytes,
    peer: tuple[str, int] | None,
    server: tuple[str, int] | None,
    name: str | None,
) -> None:
    conn = greeted()
    events, wire = receive_and_get(conn, b"XCLIENT " + attributes + b"\r\n")
    assert events == [Connected(peer=peer)]
    assert wire == GREETING
    assert (conn.peer, conn.server_address, conn.client_name) == (peer, server, name)


def test_xclient_may_come_in_pieces_and_trust_stays_with_the_connection() -> None:
    """Postfix: send NAME and ADDR first, then HELO and PROTO. The first one names a client
    outside the trusted networks; the second is still the filter's to send."""
    conn = greeted()
    receive_and_get(conn, b"XCLIENT NAME=c.example ADDR=192.0.2.7\r\n")
    events, wire = receive_and_get(conn, b"XCLIENT HELO=c.example PROTO=SMTP\r\n")
    assert events == [Connected(peer=("192.0.2.7", 50000))]
    assert wire == GREETING
    assert (conn.client_name, conn.helo_name, conn.esmtp) == ("c.example", "c.example", False)
    assert conn.state is State.READY


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        (b"XCLIENT", b"501 5.5.4 Syntax: XCLIENT attribute=value ..."),
        (b"XCLIENT FOO=bar", b"501 5.5.4 Error: bad XCLIENT attribute name"),
        (b"XCLIENT ADDR", b"501 5.5.4 Error: bad XCLIENT attribute name"),
        (b"XCLIENT ADDR=999.1.1.1", b"501 5.5.4 Error: bad ADDR address"),
        (b"XCLIENT DESTADDR=IPV6:nothing", b"501 5.5.4 Error: bad DESTADDR address"),
        (b"XCLIENT PORT=65536", b"501 5.5.4 Error: bad PORT number"),
        (b"XCLIENT PORT=-1", b"501 5.5.4 Error: bad PORT number"),
        (b"XCLIENT PROTO=LMTP", b"501 5.5.4 Error: PROTO is SMTP or ESMTP"),
        (b"XCLIENT HELO=a+0Ab", b"501 5.5.4 Error: control character in HELO"),
        (b"XCLIENT NAME=a+2", b"501 5.5.4 Error: bad xtext in NAME"),
        (b"XCLIENT HELO=", b"501 5.5.4 Error: bad HELO value"),
        (b"XCLIENT LOGIN=" + b"x" * 256, b"501 5.5.4 Error: bad LOGIN value"),
    ],
)
def test_a_bad_xclient_changes_nothing(line: bytes, reply: bytes) -> None:
    conn = greeted()
    receive_and_get(conn, b"EHLO filter.example\r\n")
    events, wire = receive_and_get(conn, line + b"\r\n")
    assert (events, wire) == ([], reply + b"\r\n")
    assert (conn.peer, conn.helo_name, conn.state) == (FILTER, "filter.example", State.READY)


def test_xclient_inside_a_transaction_gets_503() -> None:
    conn = greeted()
    receive_and_get(conn, b"EHLO filter.example\r\nMAIL FROM:<a@b.example>\r\n")
    _, wire = receive_and_get(conn, b"XCLIENT ADDR=192.0.2.7\r\n")
    assert wire == b"503 5.5.1 Error: MAIL transaction in progress\r\n"
    assert conn.peer == FILTER


def test_trust_is_judged_on_the_client_a_proxy_header_names() -> None:
    config = Config(proxy_protocol=True, xclient_trusted=("10.0.0.0/8",))
    behind = ServerConnection(config, peer=("127.0.0.1", 1))
    receive_and_get(behind, b"PROXY TCP4 10.1.2.3 10.0.0.1 5000 25\r\n")
    assert behind.xclient_offered
    stranger = ServerConnection(config, peer=("10.0.0.5", 1))
    receive_and_get(stranger, b"PROXY TCP4 192.0.2.7 10.0.0.1 5000 25\r\n")
    assert not stranger.xclient_offered


@pytest.mark.parametrize("policy", [accept_all, reject(Connected)])
def test_byte_by_byte_is_the_same(policy: object) -> None:
    data = b"EHLO f.example\r\nXCLIENT ADDR=192.0.2.7 HELO=c.example\r\nQUIT\r\n"
    results = []
    for feed in FEEDERS.values():
        conn = greeted()
        results.append(feed(conn, data, policy))
    assert results[0] == results[1]


@settings(deadline=None, max_examples=200)
@given(st.binary(max_size=300))
def test_any_xclient_argument_never_raises(arg: bytes) -> None:
    conn = greeted()
    receive_and_get(conn, b"XCLIENT " + arg.replace(b"\n", b"") + b"\r\nNOOP\r\n")
