"""The connection opening: Connected, and the greeting the application chooses."""

from __future__ import annotations

import pytest
from helpers import FULL, codes, receive_and_get, send_and_get

from smtp_core import (
    NEED_DATA,
    PAUSED,
    Accept,
    Close,
    Closed,
    CloseReason,
    Config,
    Connected,
    Quit,
    Reject,
    Reply,
    ServerConnection,
    State,
)


def test_connected_event_carries_the_peer_and_pauses() -> None:
    conn = ServerConnection(FULL, peer=("192.0.2.7", 40312))
    assert conn.state is State.CONNECT
    assert conn.next_event() == Connected(peer=("192.0.2.7", 40312))
    assert conn.next_event() is PAUSED
    # Nothing is read before the greeting is decided, however much the client sends.
    conn.receive_data(b"EHLO early.example\r\n")
    assert conn.next_event() is PAUSED
    assert conn.data_to_send() == b""


def test_default_config_and_no_peer() -> None:
    conn = ServerConnection()
    assert conn.next_event() == Connected(peer=None)
    assert send_and_get(conn, Accept()) == b"220 localhost ESMTP smtpkit\r\n"


def test_accept_sends_220_with_hostname_and_banner() -> None:
    conn = ServerConnection(FULL)
    conn.next_event()
    assert send_and_get(conn, Accept()) == b"220 mx.example.org ESMTP smtpkit\r\n"
    assert conn.state is State.GREETED
    assert conn.next_event() is NEED_DATA


@pytest.mark.parametrize(
    ("answer", "wire"),
    [
        (Accept("Postfix"), b"220 mx.example.org Postfix\r\n"),
        (Accept("mx.example.org ready"), b"220 mx.example.org ready\r\n"),
        (Reply(code=220, text=("custom", "second line")), b"220-custom\r\n220 second line\r\n"),
    ],
)
def test_greeting_text(answer: Accept | Reply, wire: bytes) -> None:
    conn = ServerConnection(FULL)
    conn.next_event()
    assert send_and_get(conn, answer) == wire


def test_greeting_has_no_enhanced_code_even_when_refused() -> None:
    conn = ServerConnection(FULL)
    conn.next_event()
    assert send_and_get(conn, Reject()) == b"554 mx.example.org Error: service refused\r\n"


REFUSED_COMMANDS = [
    b"HELO c.example",
    b"EHLO c.example",
    b"MAIL FROM:<a@example.org>",
    b"RCPT TO:<a@example.org>",
    b"DATA",
    b"BDAT 0 LAST",  # a refused chunk is still read; 0 octets keeps QUIT a command
    b"RSET",
    b"NOOP",
    b"HELP",
    b"VRFY bob",
    b"EXPN list",
    b"STARTTLS",
    b"AUTH PLAIN",
    b"XYZZY",
    b"",
]


@pytest.mark.parametrize("command", REFUSED_COMMANDS)
def test_reject_greeting_answers_503_to_everything_but_quit(command: bytes) -> None:
    conn = ServerConnection(FULL)
    conn.next_event()
    send_and_get(conn, Reject())
    assert conn.state is State.REFUSED
    events, wire = receive_and_get(conn, command + b"\r\nQUIT\r\n")
    assert codes(wire) == [503, 221]
    assert events == [Quit(), Closed(reason=CloseReason.QUIT)]


def test_refused_session_ends_after_max_errors() -> None:
    conn = ServerConnection(Config(max_errors=3))
    conn.next_event()
    send_and_get(conn, Reject(550, "go away"))
    events, wire = receive_and_get(conn, b"NOOP\r\n" * 5)
    assert codes(wire) == [503, 503, 503, 421]
    assert events == [Closed(reason=CloseReason.ERRORS)]


@pytest.mark.parametrize(
    ("answer", "wire"),
    [
        (Close(), b"421 mx.example.org Error: closing connection\r\n"),
        (Close(554, "no thanks"), b"554 mx.example.org no thanks\r\n"),
        (Reply(code=421, text=("busy",), enhanced="4.3.2"), b"421 busy\r\n"),
    ],
)
def test_close_greeting_closes(answer: Close | Reply, wire: bytes) -> None:
    conn = ServerConnection(FULL)
    conn.next_event()
    assert send_and_get(conn, answer) == wire
    assert conn.state is State.CLOSED
    assert conn.next_event() == Closed(reason=CloseReason.REFUSED)
    # Input after the close is ignored.
    conn.receive_data(b"EHLO late.example\r\n")
    assert conn.next_event() == Closed(reason=CloseReason.REFUSED)
    assert conn.data_to_send() == b""
