"""The application side: send() rules, Reply answers, abort(), EOF, and LMTP's per-recipient
replies (RFC 2033)."""

from __future__ import annotations

import pytest
from helpers import ENVELOPE, FULL, codes, connect, hold, receive_and_get, send_and_get, session

from smtp_core import (
    NEED_DATA,
    PAUSED,
    Accept,
    Close,
    Closed,
    CloseReason,
    Config,
    Connected,
    EndOfMessage,
    Hello,
    LocalProtocolError,
    MailFrom,
    MailParams,
    MessageData,
    Outcome,
    ProtocolError,
    Quit,
    RcptParams,
    RcptTo,
    Reject,
    RemoteProtocolError,
    Reply,
    Reset,
    ServerConnection,
    StartTLS,
    State,
    outcome_of,
)

LMTP = Config(hostname="lmtp.example.org", lmtp=True)
OK = b"250 2.0.0 Ok\r\n"


def test_send_without_a_pending_event_is_a_local_error() -> None:
    conn = ServerConnection(FULL)
    with pytest.raises(LocalProtocolError):
        conn.send(Accept())
    conn.next_event()
    conn.send(Accept())
    with pytest.raises(LocalProtocolError):
        conn.send(Accept())


def test_send_after_an_informational_event_is_a_local_error() -> None:
    conn = session()
    conn.receive_data(b"RSET\r\n")
    conn.next_event()
    with pytest.raises(LocalProtocolError):
        conn.send(Accept())
    assert conn.data_to_send() == b"250 2.0.0 Ok\r\n"


@pytest.mark.parametrize("bad", ["yes", None, 250, True, {"a@example.org": Accept()}])
def test_bad_answer_is_a_local_error_and_the_event_stays_pending(bad: object) -> None:
    conn = session()
    conn.receive_data(b"MAIL FROM:<a@example.org>\r\nNOOP\r\n")
    event = conn.next_event()
    assert isinstance(event, MailFrom)
    with pytest.raises(LocalProtocolError):
        conn.send(bad)  # type: ignore[arg-type]
    assert conn.data_to_send() == b""
    assert conn.next_event() is PAUSED
    assert send_and_get(conn, Accept()) == b"250 2.1.0 Ok\r\n"
    assert conn.next_event() is NEED_DATA
    assert conn.data_to_send() == b"250 2.0.0 Ok\r\n"


def test_answering_the_wrong_event_is_a_local_error_and_changes_nothing() -> None:
    conn = session()
    conn.receive_data(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\n")
    mail = conn.next_event()
    assert isinstance(mail, MailFrom)
    stale = Hello(hostname="c.example", extended=True)
    with pytest.raises(LocalProtocolError, match="not the event awaiting"):
        conn.send(Accept(), stale)
    assert (conn.next_event(), conn.data_to_send(), conn.state) == (PAUSED, b"", State.READY)
    conn.send(Accept(), mail)
    rcpt = conn.next_event()
    assert isinstance(rcpt, RcptTo)
    # The answered MailFrom is not the pending event any more: a late answer to it fails.
    with pytest.raises(LocalProtocolError):
        conn.send(Reject(), mail)
    conn.send(Accept(), rcpt)
    assert conn.data_to_send() == b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"


def test_answering_an_event_twice_is_a_local_error() -> None:
    conn = session()
    conn.receive_data(b"MAIL FROM:<a@example.org>\r\n")
    mail = conn.next_event()
    assert isinstance(mail, MailFrom)
    conn.send(Accept(), mail)
    with pytest.raises(LocalProtocolError, match="answered twice"):
        conn.send(Accept(), mail)
    assert conn.data_to_send() == b"250 2.1.0 Ok\r\n"
    assert conn.state is State.MAIL


@pytest.mark.parametrize("bad", ["yes", None, {"a@example.org": Accept()}])
def test_check_answer_vets_without_answering(bad: object) -> None:
    conn = session()
    conn.receive_data(b"MAIL FROM:<a@example.org>\r\n")
    event = conn.next_event()
    with pytest.raises(LocalProtocolError):
        conn.check_answer(bad)
    conn.check_answer(Accept(), event)
    conn.check_answer(Reply(code=250))
    assert (conn.next_event(), conn.data_to_send()) == (PAUSED, b"")
    conn.send(Accept())
    with pytest.raises(LocalProtocolError):
        conn.check_answer(Accept())


def test_send_returns_nothing_and_replies_wait_in_the_one_buffer() -> None:
    """One output path: the NOOP answered by the engine and the MAIL answered by the
    application leave in command order, from data_to_send() only."""
    conn = session()
    conn.receive_data(b"NOOP\r\nMAIL FROM:<a@example.org>\r\nNOOP\r\n")
    assert isinstance(conn.next_event(), MailFrom)
    assert conn.send(Reject(451)) is None  # type: ignore[func-returns-value]
    assert conn.next_event() is NEED_DATA
    assert conn.data_to_send() == (
        b"250 2.0.0 Ok\r\n451 4.7.1 Error: sender rejected\r\n250 2.0.0 Ok\r\n"
    )
    assert conn.data_to_send() == b""


@pytest.mark.parametrize(
    ("answer", "outcome"),
    [
        (Accept(), Outcome.ACCEPT),
        (Accept("fine"), Outcome.ACCEPT),
        (Reject(), Outcome.REJECT),
        (Reject(451), Outcome.REJECT),
        (Reject(421), Outcome.CLOSE),
        (Close(), Outcome.CLOSE),
        (Close(554), Outcome.CLOSE),
        (Reply(code=250), Outcome.ACCEPT),
        (Reply(code=354), Outcome.ACCEPT),
        (Reply(code=450), Outcome.REJECT),
        (Reply(code=421), Outcome.CLOSE),
    ],
)
def test_outcome_of(answer: Accept | Reject | Close | Reply, outcome: Outcome) -> None:
    assert outcome_of(answer) is outcome


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"QUIT\r\n", CloseReason.QUIT),
        (b"", CloseReason.EOF),
        (b"GET / HTTP/1.1\r\n", CloseReason.FORBIDDEN),
        (b"XYZZY\r\n" * 20, CloseReason.ERRORS),
    ],
)
def test_close_reasons_are_typed(data: bytes, reason: CloseReason) -> None:
    conn = session()
    events, _ = receive_and_get(conn, data) if data else ([], b"")
    if not data:
        conn.receive_data(b"")
        events = [conn.next_event()]
    assert isinstance(events[-1], Closed)
    assert events[-1].reason is reason


def test_abort_without_a_reply() -> None:
    """The connection is gone: nothing to say, but the session still ends."""
    conn = session()
    conn.receive_data(b"MAIL FROM:<a@example.org>\r\nNOOP\r\n")
    assert isinstance(conn.next_event(), MailFrom)
    conn.abort(None)
    assert conn.data_to_send() == b""
    assert conn.next_event() == Closed(reason=CloseReason.ABORTED)


def test_error_classes() -> None:
    with pytest.raises(TypeError):
        ProtocolError("abstract")
    error = RemoteProtocolError("bad", Reply(code=500))
    assert error.reply_hint == Reply(code=500)
    assert LocalProtocolError("x").reply_hint is None
    assert issubclass(LocalProtocolError, ProtocolError)


@pytest.mark.parametrize(
    ("answer", "wire", "state"),
    [
        (Reply(code=250, text=("queued",), enhanced="2.1.0"), b"250 2.1.0 queued\r\n", State.MAIL),
        (Reply(code=451, text=("later",)), b"451 later\r\n", State.READY),
        (Reply(code=421, text=("bye",)), b"421 bye\r\n", State.CLOSED),
    ],
)
def test_reply_objects_are_answers(answer: Reply, wire: bytes, state: State) -> None:
    conn = session()
    _, out = receive_and_get(conn, b"MAIL FROM:<a@example.org>\r\n", lambda e: answer)
    assert out == wire
    assert conn.state is state


def test_informational_events_need_no_answer() -> None:
    conn = session()
    conn.receive_data(b"RSET\r\nQUIT\r\n")
    assert conn.next_event() == Reset()
    assert conn.next_event() == Quit()
    assert conn.next_event() == Closed(reason=CloseReason.QUIT)
    assert conn.next_event() == Closed(reason=CloseReason.QUIT)
    assert conn.data_to_send() == b"250 2.0.0 Ok\r\n221 2.0.0 Bye\r\n"


def test_abort() -> None:
    conn = session()
    conn.receive_data(b"MAIL FROM:<a@example.org>\r\n")
    assert isinstance(conn.next_event(), MailFrom)
    conn.abort(Reply(code=421, text=("timeout",), enhanced="4.4.2"))
    assert conn.data_to_send() == b"421 4.4.2 timeout\r\n"
    assert conn.next_event() == Closed(reason=CloseReason.ABORTED)
    with pytest.raises(LocalProtocolError):
        conn.send(Accept())
    conn.abort(Reply(code=421))
    assert conn.data_to_send() == b""


def test_data_after_eof_is_a_local_error() -> None:
    conn = session()
    conn.receive_data(b"NOOP\r\n")
    conn.receive_data(b"")
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"NOOP\r\n")
    # What came before the EOF is still answered.
    events, wire = receive_and_get(conn, b"")
    assert events == [Closed(reason=CloseReason.EOF)]
    assert wire == b"250 2.0.0 Ok\r\n"


def test_eof_before_the_greeting_decision() -> None:
    conn = ServerConnection(FULL)
    conn.receive_data(b"")
    events, wire = receive_and_get(conn, b"")
    assert events == [Connected(peer=None), Closed(reason=CloseReason.EOF)]
    assert wire == b"220 mx.example.org ESMTP smtpkit\r\n"


def test_bytearray_input() -> None:
    _, wire = receive_and_get(session(), bytearray(b"NOOP\r\n"))  # type: ignore[arg-type]
    assert wire == b"250 2.0.0 Ok\r\n"


def test_public_properties() -> None:
    conn = ServerConnection(FULL, peer=("192.0.2.1", 25))
    assert conn.peer == ("192.0.2.1", 25)
    assert conn.config is FULL
    assert conn.state is State.CONNECT
    assert conn.helo_name is None
    assert not conn.esmtp
    assert not conn.tls_active
    assert conn.authenticated_user is None
    assert conn.sender is None
    assert conn.recipients == ()
    assert conn.auth_offered


# ---------------------------------------------------------------- LMTP


def lmtp_session() -> ServerConnection:
    conn = connect(LMTP)
    events, wire = receive_and_get(conn, b"LHLO c.example\r\n")
    assert events == [Hello(hostname="c.example", extended=True)]
    assert wire.startswith(b"250-lmtp.example.org\r\n")
    return conn


LMTP_ENVELOPE = (
    b"MAIL FROM:<a@example.org>\r\n"
    b"RCPT TO:<one@example.org>\r\n"
    b"RCPT TO:<refused@example.org>\r\n"
    b"RCPT TO:<two@example.org>\r\n"
    b"RCPT TO:<three@example.org>\r\n"
)


def refuse_one(event: object) -> Accept | Reject:
    if isinstance(event, RcptTo) and event.recipient.startswith("refused"):
        return Reject()
    return Accept()


@pytest.mark.parametrize("line", [b"EHLO c", b"HELO c"])
def test_lmtp_needs_lhlo(line: bytes) -> None:
    conn = connect(LMTP)
    _, wire = receive_and_get(conn, line + b"\r\nMAIL FROM:<a@example.org>\r\n")
    assert wire == b"500 5.5.2 Error: command not recognized\r\n" + (
        b"503 5.5.1 Error: send HELO/EHLO first\r\n"
    )


@pytest.mark.parametrize("data", [b"DATA\r\nhello\r\n.\r\n", b"BDAT 7 LAST\r\nhello\r\n"])
def test_lmtp_one_reply_per_accepted_recipient_in_order(data: bytes) -> None:
    conn = lmtp_session()
    receive_and_get(conn, LMTP_ENVELOPE, refuse_one)
    conn.receive_data(data)
    content = b""
    while not isinstance(event := conn.next_event(), EndOfMessage):
        assert event is not PAUSED and event is not NEED_DATA
        if isinstance(event, MessageData):
            content += event.data
    assert content == b"hello\r\n"
    assert event == EndOfMessage(
        size=7,
        sender="a@example.org",
        recipients=("one@example.org", "two@example.org", "three@example.org"),
        params=MailParams(),
        rcpt_params=(RcptParams(),) * 3,
    )
    conn.data_to_send()
    wire = send_and_get(
        conn,
        {
            "three@example.org": Reject(452, "mailbox full"),
            "one@example.org": Accept(),
            "two@example.org": Reply(code=550, text=("5.1.1 no such user",), enhanced="5.1.1"),
        },
    )
    assert wire == (b"250 2.0.0 Ok\r\n550 5.1.1 no such user\r\n452 4.7.1 mailbox full\r\n")
    assert conn.state is State.READY


def test_lmtp_single_decision_applies_to_every_recipient() -> None:
    conn = lmtp_session()
    receive_and_get(conn, LMTP_ENVELOPE, refuse_one)
    _, wire = receive_and_get(conn, b"DATA\r\nx\r\n.\r\n", lambda e: Reject(451, "later"))
    assert wire == b"354 End data with <CR><LF>.<CR><LF>\r\n" + b"451 4.7.1 later\r\n" * 3


def test_lmtp_missing_recipient_is_a_local_error_and_nothing_is_written() -> None:
    conn = lmtp_session()
    receive_and_get(
        conn, LMTP_ENVELOPE + b"DATA\r\nx\r\n.\r\n", hold(EndOfMessage, policy=refuse_one)
    )
    assert conn.next_event() is PAUSED
    partial = {"one@example.org": Accept(), "two@example.org": Accept()}
    with pytest.raises(LocalProtocolError):
        conn.send(partial)
    assert conn.data_to_send() == b""
    assert conn.next_event() is PAUSED
    wire = send_and_get(conn, {**partial, "three@example.org": Accept()})
    assert codes(wire) == [250, 250, 250]


def test_lmtp_close_for_one_recipient_closes_after_all_replies() -> None:
    conn = lmtp_session()
    receive_and_get(
        conn, LMTP_ENVELOPE + b"DATA\r\nx\r\n.\r\n", hold(EndOfMessage, policy=refuse_one)
    )
    wire = send_and_get(
        conn,
        {"one@example.org": Close(), "two@example.org": Accept(), "three@example.org": Accept()},
    )
    assert codes(wire) == [421, 250, 250]
    assert conn.next_event() == Closed(reason=CloseReason.REFUSED)


def test_mapping_outside_lmtp_messages_is_a_local_error() -> None:
    conn = session()
    events, _ = receive_and_get(conn, ENVELOPE + b"DATA\r\nx\r\n.\r\n", hold(EndOfMessage))
    assert isinstance(events[-1], EndOfMessage)
    with pytest.raises(LocalProtocolError):
        conn.send({"b@example.org": Accept()})
    assert send_and_get(conn, Accept()) == b"250 2.0.0 Ok\r\n"


def test_transaction_properties() -> None:
    conn = session()
    data = b"MAIL FROM:<a@example.org> SIZE=10\r\nRCPT TO:<b@example.org> NOTIFY=NEVER\r\n"
    receive_and_get(conn, data)
    assert conn.mail_params == MailParams(size=10)
    assert conn.rcpt_params == (RcptParams(notify=("NEVER",)),)
    assert not conn.reading_chunk
    receive_and_get(conn, b"BDAT 4\r\nab")
    assert conn.reading_chunk
    receive_and_get(conn, b"cd")
    assert not conn.reading_chunk
    receive_and_get(conn, b"RSET\r\n")
    assert conn.mail_params == MailParams()
    assert conn.rcpt_params == ()


# ---------------------------------------------------------------- auto_accept


def test_auto_accepted_events_are_answered_by_the_engine() -> None:
    conn = ServerConnection(FULL, auto_accept=frozenset({Connected, Hello, RcptTo}))
    conn.receive_data(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\n")
    assert isinstance(conn.next_event(), MailFrom)
    wire = conn.data_to_send()
    assert wire.startswith(b"220 mx.example.org ESMTP smtpkit\r\n250-mx.example.org\r\n")
    assert send_and_get(conn, Reject()) == b"550 5.7.1 Error: sender rejected\r\n"
    assert conn.next_event() is NEED_DATA
    assert conn.data_to_send() == b"503 5.5.1 Error: need MAIL command\r\n"


def test_auto_accepted_message_and_lmtp() -> None:
    conn = ServerConnection(LMTP, auto_accept=frozenset({Connected, Hello, RcptTo, EndOfMessage}))
    conn.receive_data(b"LHLO c\r\nMAIL FROM:<>\r\n")
    assert isinstance(conn.next_event(), MailFrom)
    conn.send(Accept())
    conn.receive_data(b"RCPT TO:<x@example.org>\r\nRCPT TO:<y@example.org>\r\nDATA\r\nhi\r\n.\r\n")
    assert conn.next_event() == MessageData(data=b"hi\r\n")  # content is never auto-answered
    assert conn.next_event() is NEED_DATA
    assert conn.data_to_send().endswith(b"354 End data with <CR><LF>.<CR><LF>\r\n" + OK * 2)


def test_auto_accepted_starttls_pauses_for_the_handshake() -> None:
    conn = ServerConnection(FULL, auto_accept=frozenset({Connected, Hello, StartTLS}))
    conn.receive_data(b"EHLO c\r\nSTARTTLS\r\nNOOP\r\n")
    assert conn.next_event() is PAUSED
    assert conn.data_to_send().endswith(b"220 2.0.0 Ready to start TLS\r\n")
    assert conn.state is State.STARTTLS
    conn.tls_started()
    assert conn.next_event() is NEED_DATA
    assert conn.data_to_send() == b""
