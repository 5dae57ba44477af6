"""Pipelining (RFC 2920): replies in command order, one decision outstanding at a time."""

from __future__ import annotations

import pytest
from helpers import FEEDERS, FULL, receive_and_get, reject, send_and_get, session

from smtp_core import (
    NEED_DATA,
    PAUSED,
    Accept,
    Closed,
    Connected,
    EndOfMessage,
    Hello,
    MailFrom,
    MessageData,
    Quit,
    RcptTo,
    Reject,
    Reset,
    ServerConnection,
)

PIPELINE = (
    b"NOOP\r\n"
    b"EHLO client.example\r\n"
    b"MAIL FROM:<a@example.org>\r\n"
    b"RCPT TO:<b@example.org>\r\n"
    b"RCPT TO:<nobody@example.org>\r\n"
    b"VRFY b\r\n"
    b"RCPT TO:<c@example.org>\r\n"
    b"DATA\r\n"
    b"Subject: pipelined\r\n\r\nbody\r\n.\r\n"
    b"RSET\r\n"
    b"QUIT\r\n"
)


def policy(event: object) -> Accept | Reject:
    if isinstance(event, RcptTo) and event.recipient.startswith("nobody"):
        return Reject(550, "5.1.1 no such user")
    return Accept()


@pytest.mark.parametrize("feed", FEEDERS)
def test_whole_transaction_in_one_piece_replies_in_command_order(feed: str) -> None:
    conn = ServerConnection(FULL)
    events, wire = FEEDERS[feed](conn, PIPELINE, policy)
    assert [type(e) for e in events] == [
        Connected,
        Hello,
        MailFrom,
        RcptTo,
        RcptTo,
        RcptTo,
        MessageData,
        EndOfMessage,
        Reset,
        Quit,
        Closed,
    ]
    lines = [line for line in wire.split(b"\r\n") if line and line[3:4] == b" "]
    assert lines == [
        b"220 mx.example.org ESMTP smtpkit",
        b"250 2.0.0 Ok",
        b"250 AUTH PLAIN LOGIN",
        b"250 2.1.0 Ok",
        b"250 2.1.5 Ok",
        b"550 5.1.1 no such user",
        b"252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery",
        b"250 2.1.5 Ok",
        b"354 End data with <CR><LF>.<CR><LF>",
        b"250 2.0.0 Ok",
        b"250 2.0.0 Ok",
        b"221 2.0.0 Bye",
    ]


def test_engine_pauses_at_each_decision_and_reads_nothing_behind_it() -> None:
    conn = session()
    conn.receive_data(b"NOOP\r\nMAIL FROM:<a@example.org>\r\nNOOP\r\nRCPT TO:<b@example.org>\r\n")
    assert isinstance(conn.next_event(), MailFrom)
    # The NOOP before MAIL is answered; the one behind it is not read yet.
    assert conn.data_to_send() == b"250 2.0.0 Ok\r\n"
    for _ in range(3):
        assert conn.next_event() is PAUSED
    conn.receive_data(b"NOOP\r\n")  # more input while the decision is pending
    assert conn.next_event() is PAUSED
    assert conn.data_to_send() == b""
    assert send_and_get(conn, Accept()) == b"250 2.1.0 Ok\r\n"
    assert isinstance(conn.next_event(), RcptTo)
    assert conn.data_to_send() == b"250 2.0.0 Ok\r\n"
    assert send_and_get(conn, Accept()) == b"250 2.1.5 Ok\r\n"
    assert conn.next_event() is NEED_DATA
    assert conn.data_to_send() == b"250 2.0.0 Ok\r\n"


def test_rejected_mail_then_pipelined_rcpt_and_data_get_503() -> None:
    conn = session()
    data = b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\ntext\r\n.\r\nNOOP\r\n"
    events, wire = receive_and_get(conn, data, reject(MailFrom))
    assert [type(e) for e in events] == [MailFrom]
    assert wire == (
        b"550 5.7.1 Error: sender rejected\r\n"
        b"503 5.5.1 Error: need MAIL command\r\n"
        b"503 5.5.1 Error: need MAIL command\r\n"
        b"500 5.5.2 Error: command not recognized\r\n"
        b"500 5.5.2 Error: command not recognized\r\n"
        b"250 2.0.0 Ok\r\n"
    )


def test_decisions_may_be_answered_later_in_any_receive_pattern() -> None:
    conn = session()
    conn.receive_data(b"MAIL FROM:<a@example.org>\r\nRC")
    assert isinstance(conn.next_event(), MailFrom)
    conn.receive_data(b"PT TO:<b@example.org>\r\n")
    assert conn.next_event() is PAUSED
    conn.send(Accept())
    event = conn.next_event()
    assert isinstance(event, RcptTo)
    assert event.recipient == "b@example.org"
