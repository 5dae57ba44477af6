"""STARTTLS (RFC 3207): the pause, the injection defence, and the reset after the handshake."""

from __future__ import annotations

import base64

import pytest
from helpers import (
    ENVELOPE,
    FEEDERS,
    FULL,
    codes,
    connect,
    hold,
    receive_and_get,
    reject,
    replies,
    send_and_get,
    session,
)

from smtp_core import (
    NEED_DATA,
    PAUSED,
    Accept,
    AuthCredentials,
    Close,
    Closed,
    CloseReason,
    Config,
    Hello,
    LocalProtocolError,
    ServerConnection,
    StartTLS,
    State,
)

READY_TLS = b"220 2.0.0 Ready to start TLS\r\n"
INJECTED = b"MAIL FROM:<evil@example.net>\r\nRCPT TO:<victim@example.org>\r\n"


@pytest.mark.parametrize("feed", FEEDERS)
def test_accept_sends_220_and_pauses(feed: str) -> None:
    conn = session()
    events, wire = FEEDERS[feed](conn, b"STARTTLS\r\n")
    assert events == [StartTLS()]
    assert wire == READY_TLS
    assert conn.state is State.STARTTLS
    assert conn.next_event() is PAUSED


@pytest.mark.parametrize("feed", FEEDERS)
def test_plaintext_pipelined_behind_starttls_is_discarded(feed: str) -> None:
    """Whatever arrived behind STARTTLS before its 220 is dropped unread, and counted."""
    conn = session()
    events, wire = FEEDERS[feed](conn, b"STARTTLS\r\n" + INJECTED, hold(StartTLS))
    assert (events, wire) == ([StartTLS()], b"")
    assert send_and_get(conn, Accept()) == READY_TLS
    assert conn.plaintext_discarded == len(INJECTED)
    conn.tls_started()
    assert conn.next_event() is NEED_DATA
    assert conn.data_to_send() == b""
    events, wire = receive_and_get(conn, b"EHLO c.example\r\n")
    assert events == [Hello(hostname="c.example", extended=True)]
    assert conn.plaintext_discarded == len(INJECTED)


def test_plaintext_in_the_same_read_as_starttls_is_discarded() -> None:
    conn = session()
    events, wire = receive_and_get(conn, b"STARTTLS\r\n" + INJECTED)
    assert (events, wire) == ([StartTLS()], READY_TLS)
    assert conn.plaintext_discarded == len(INJECTED)


def test_bytes_fed_during_the_handshake_are_a_local_error() -> None:
    """After the 220, what the client sends belongs to the TLS handshake: feeding it to the
    engine before `tls_started()` is a transport bug, and nothing changes."""
    conn = session()
    receive_and_get(conn, b"STARTTLS\r\n")
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"EHLO c.example\r\n")
    assert conn.state is State.STARTTLS
    assert conn.next_event() is PAUSED
    conn.tls_started()
    events, wire = receive_and_get(conn, b"EHLO c.example\r\n")
    assert events == [Hello(hostname="c.example", extended=True)]
    assert codes(wire) == [250]
    assert conn.plaintext_discarded == 0


def test_tls_started_forgets_the_session() -> None:
    conn = session()
    creds = b"AUTH PLAIN " + base64.b64encode(b"\0alice\0pw") + b"\r\n"
    receive_and_get(conn, creds)
    assert conn.authenticated_user == "alice"
    receive_and_get(conn, b"STARTTLS\r\n")
    conn.tls_started()
    assert conn.state is State.GREETED
    assert conn.tls_active
    assert conn.helo_name is None
    assert not conn.esmtp
    assert conn.authenticated_user is None
    _, wire = receive_and_get(conn, b"MAIL FROM:<a@example.org>\r\n")
    assert wire == b"503 5.5.1 Error: send HELO/EHLO first\r\n"
    _, wire = receive_and_get(conn, b"EHLO c.example\r\n" + creds)
    [(_, ehlo), (auth, _)] = replies(wire)
    assert "STARTTLS" not in ehlo
    assert "AUTH PLAIN LOGIN" in ehlo
    assert auth == 235


def test_second_starttls_is_503() -> None:
    conn = session()
    receive_and_get(conn, b"STARTTLS\r\n")
    conn.tls_started()
    _, wire = receive_and_get(conn, b"EHLO c\r\nSTARTTLS\r\n")
    assert wire.endswith(b"503 5.5.1 Error: TLS already active\r\n")


def test_starttls_needs_tls_available() -> None:
    _, wire = receive_and_get(session(Config()), b"STARTTLS\r\n")
    assert wire == b"502 5.5.1 Error: command not implemented\r\n"


def test_starttls_takes_no_argument() -> None:
    _, wire = receive_and_get(session(), b"STARTTLS now\r\n")
    assert wire == b"501 5.5.4 Syntax: STARTTLS\r\n"


def test_starttls_in_a_transaction_is_503() -> None:
    _, wire = receive_and_get(session(), ENVELOPE + b"STARTTLS\r\n")
    assert wire.endswith(b"503 5.5.1 Error: MAIL transaction in progress\r\n")


def test_starttls_before_ehlo() -> None:
    events, wire = receive_and_get(connect(), b"STARTTLS\r\n")
    assert (events, wire) == ([StartTLS()], READY_TLS)


def test_rejected_starttls_keeps_the_session_in_plaintext() -> None:
    conn = session()
    _, wire = receive_and_get(conn, b"STARTTLS\r\nNOOP\r\n", reject(StartTLS))
    assert wire == b"454 4.7.0 TLS not available due to temporary reason\r\n250 2.0.0 Ok\r\n"
    assert conn.state is State.READY
    assert not conn.tls_active
    assert conn.helo_name == "client.example"


def test_close_answer_to_starttls() -> None:
    events, wire = receive_and_get(session(), b"STARTTLS\r\n", reject(StartTLS, answer=Close()))
    assert codes(wire) == [421]
    assert events[-1] == Closed(reason=CloseReason.REFUSED)


def test_implicit_tls_offers_auth_but_not_starttls() -> None:
    config = Config(tls_available=True, auth_mechanisms=("PLAIN",))
    conn = connect(config, tls=True)
    assert conn.tls_active
    _, wire = receive_and_get(conn, b"EHLO c\r\nSTARTTLS\r\n")
    [(_, ehlo), (code, _)] = replies(wire)
    assert "STARTTLS" not in ehlo
    assert ehlo[-1] == "AUTH PLAIN"
    assert code == 503


def test_tls_started_without_starttls_is_a_local_error() -> None:
    conn = session()
    with pytest.raises(LocalProtocolError):
        conn.tls_started()
    # Also while the StartTLS event still waits for its answer.
    conn.receive_data(b"STARTTLS\r\n")
    assert conn.next_event() == StartTLS()
    with pytest.raises(LocalProtocolError):
        conn.tls_started()


def test_auth_then_starttls_then_auth_again() -> None:
    conn = session(FULL)
    creds = b"AUTH PLAIN " + base64.b64encode(b"\0alice\0pw") + b"\r\n"
    events, _ = receive_and_get(conn, creds + b"STARTTLS\r\n")
    assert [type(e) for e in events] == [AuthCredentials, StartTLS]
    conn.tls_started()
    events, wire = receive_and_get(conn, b"EHLO c\r\n" + creds)
    assert codes(wire) == [250, 235]


def test_eof_during_the_handshake_closes_the_session() -> None:
    conn = ServerConnection(Config(tls_available=True))
    conn.next_event()
    conn.send(Accept())
    conn.receive_data(b"EHLO c.example\r\nSTARTTLS\r\n")
    assert isinstance(conn.next_event(), Hello)
    conn.send(Accept())
    assert isinstance(conn.next_event(), StartTLS)
    conn.send(Accept())
    assert conn.next_event() is PAUSED
    conn.receive_data(b"")
    assert conn.next_event() == Closed(reason=CloseReason.EOF)
