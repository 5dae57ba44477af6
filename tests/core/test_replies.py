"""Reply formatting: multi-line replies, enhanced status codes, and text that cannot split."""

from __future__ import annotations

import base64
import dataclasses
import re
from collections.abc import Callable

import pytest
from helpers import FULL, connect, receive_and_get, reject, replies, send_and_get, session

from smtp_core import (
    Accept,
    Answer,
    AuthCredentials,
    Close,
    Closed,
    CloseReason,
    Config,
    Connected,
    EndOfMessage,
    Event,
    Hello,
    MailFrom,
    RcptTo,
    Reject,
    Reply,
    ServerConnection,
    StartTLS,
)

ENHANCED = re.compile(r"([245])\.\d{1,3}\.\d{1,3} ")

#: A session that makes the engine produce nearly every reply it has, with the policy that
#: answers it (rejecting some events so that the refusals show up too).
TOUR = (
    b"EHLO c.example\r\n"
    b"NOOP\r\nHELP\r\nVRFY bob\r\nEXPN staff\r\nXYZZY\r\n\r\nRSET x\r\n"
    b"MAIL FROM:<bad\r\nMAIL FROM:<a@example.org> XFOO\r\nMAIL FROM:<a@example.org> SIZE=9999\r\n"
    b"MAIL FROM:<reject@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n"
    b"MAIL FROM:<a@example.org>\r\nRCPT TO:<reject@example.org>\r\nDATA\r\nBDAT 1\r\nx"
    b"RCPT TO:<b@example.org>\r\nRCPT TO:<c@example.org>\r\nRCPT TO:<d@example.org>\r\n"
    b"DATA\r\nbare\nLF\r\n.\r\n"
    b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\nfine\r\n.\r\n"
    b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nBDAT 2\r\nokBDAT 0 LAST\r\n"
    b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\nreject\r\n.\r\n"
    b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nBDAT 20 LAST\r\n01234567890123456789"
    b"AUTH LOGIN\r\n" + base64.b64encode(b"alice") + b"\r\n" + base64.b64encode(b"bad") + b"\r\n"
    b"AUTH PLAIN\r\n*\r\nAUTH CRAM-MD5\r\n"
    b"AUTH PLAIN " + base64.b64encode(b"\0alice\0good") + b"\r\n"
    b"AUTH PLAIN\r\nSTARTTLS\r\n"
)
TOUR_CONFIG = dataclasses.replace(FULL, max_recipients=2, max_message_size=10, max_errors=100)


def tour_policy(event: Event) -> Answer:
    if isinstance(event, MailFrom) and event.sender.startswith("reject"):
        return Reject()
    if isinstance(event, RcptTo) and event.recipient.startswith("reject"):
        return Reject()
    if isinstance(event, EndOfMessage) and event.size == len(b"reject\r\n"):  # the tour's one
        return Reject(451)
    if isinstance(event, AuthCredentials) and event.password == "bad":
        return Reject()
    return Accept()


def run_tour(config: Config) -> tuple[bytes, list[tuple[int, list[str]]]]:
    conn = ServerConnection(config)
    greeting = conn.next_event()
    assert isinstance(greeting, Connected)
    greeting_wire = send_and_get(conn, Accept())
    _, wire = receive_and_get(conn, TOUR, tour_policy)
    return greeting_wire, replies(wire)


def test_tour_covers_the_reply_codes() -> None:
    _, tour = run_tour(TOUR_CONFIG)
    assert sorted({code for code, _ in tour}) == [
        214,
        220,
        235,
        250,
        252,
        334,
        354,
        451,
        452,
        500,
        501,
        502,
        503,
        504,
        535,
        550,
        552,
        554,
        555,
    ]


def test_enhanced_codes_on_every_reply_but_greeting_hello_354_and_334() -> None:
    greeting, tour = run_tour(TOUR_CONFIG)
    assert not ENHANCED.match(replies(greeting)[0][1][0])
    ehlo, *rest = tour
    assert ehlo[0] == 250
    assert not any(ENHANCED.match(line) for line in ehlo[1])
    for code, lines in rest:
        for line in lines:
            m = ENHANCED.match(line)
            if code in (334, 354):
                assert m is None, (code, line)
            else:
                assert m is not None, (code, line)
                assert m.group(1) == str(code)[0], (code, line)


def test_no_enhanced_codes_anywhere_when_switched_off() -> None:
    greeting, tour = run_tour(dataclasses.replace(TOUR_CONFIG, enhanced_status_codes=False))
    assert len(tour) == len(run_tour(TOUR_CONFIG)[1])
    for _, lines in [*replies(greeting), *tour]:
        for line in lines:
            assert not ENHANCED.match(line), line


def test_replies_to_hello_refusals_and_errors_carry_enhanced_codes() -> None:
    _, wire = receive_and_get(connect(), b"EHLO\r\nEHLO c\r\n", reject(Hello))
    assert wire == b"501 5.5.4 Syntax: EHLO hostname\r\n550 5.7.1 Error: HELO/EHLO rejected\r\n"


def test_multi_line_reply_format() -> None:
    answer = Reply(code=250, text=("first", "second", "third"), enhanced="2.1.0")
    conn = session()
    _, wire = receive_and_get(conn, b"MAIL FROM:<a@example.org>\r\n", lambda e: answer)
    assert wire == b"250-2.1.0 first\r\n250-2.1.0 second\r\n250 2.1.0 third\r\n"


def test_reply_without_text_or_enhanced_code() -> None:
    conn = session()
    _, wire = receive_and_get(conn, b"MAIL FROM:<a@example.org>\r\n", lambda e: Reply(code=250))
    assert wire == b"250\r\n"


@pytest.mark.parametrize(
    ("answer", "wire"),
    [
        (Reject(450), b"450 4.7.1 Error: sender rejected\r\n"),
        (Reject(451, "greylisted"), b"451 4.7.1 greylisted\r\n"),
        (Reject(550, "5.1.8 bad sender domain"), b"550 5.1.8 bad sender domain\r\n"),
        (Reject(text="no"), b"550 5.7.1 no\r\n"),
        (Accept("2.1.0 Sender ok"), b"250 2.1.0 Sender ok\r\n"),
        (Accept("fine"), b"250 2.1.0 fine\r\n"),
        (Close(554), b"554 5.7.0 mx.example.org Error: closing connection\r\n"),
        (Close(text="bye"), b"421 4.7.0 bye\r\n"),
        (Reply(code=250, text=("x",), enhanced="2.0.0"), b"250 2.0.0 x\r\n"),
        (Reply(code=550, text=("x",)), b"550 x\r\n"),
    ],
)
def test_decision_reply_codes(answer: Answer, wire: bytes) -> None:
    conn = session()
    _, out = receive_and_get(conn, b"MAIL FROM:<a@example.org>\r\n", lambda e: answer)
    assert out == wire


def test_reject_with_421_closes_the_connection() -> None:
    conn = session()
    events, wire = receive_and_get(
        conn, b"MAIL FROM:<a@example.org>\r\nNOOP\r\n", lambda e: Reject(421, "shutting down")
    )
    assert wire == b"421 4.7.1 shutting down\r\n"
    assert events[-1] == Closed(reason=CloseReason.REFUSED)


UNSAFE_TEXTS = [
    "ok\r\n250 injected",
    "ok\n250 injected",
    "ok\r250 injected",
    "nul\x00byte",
    "esc\x1b[2Jape",
    "del\x7f",
    "tab\there",
    "\r\n",
]


def one_reply_per_command(wire: bytes, commands: int) -> list[tuple[int, list[str]]]:
    parsed = replies(wire)
    assert len(parsed) == commands
    assert wire.count(b"\r\n") == sum(len(lines) for _, lines in parsed)
    for byte in (b"\x00", b"\x1b", b"\x7f", b"\t"):
        assert byte not in wire
    return parsed


@pytest.mark.parametrize("text", UNSAFE_TEXTS)
@pytest.mark.parametrize("event_type", [MailFrom, RcptTo, EndOfMessage, AuthCredentials, StartTLS])
@pytest.mark.parametrize("kind", [Accept, Reject, Close])
def test_application_text_never_splits_a_reply(text: str, event_type: type, kind: type) -> None:
    answer = kind(text=text)
    conn = session()
    data = (
        b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\nx\r\n.\r\n"
        + b"AUTH PLAIN "
        + base64.b64encode(b"\0alice\0pw")
        + b"\r\nSTARTTLS\r\n"
    )
    _, wire = receive_and_get(conn, data, reject(event_type, answer=answer))
    # Replies: MAIL, RCPT, DATA (354), the message, AUTH, STARTTLS. A refused MAIL or RCPT
    # turns the two message lines into two (500) commands; Close stops after its own reply.
    if kind is Close:
        expected = {MailFrom: 1, RcptTo: 2, EndOfMessage: 4, AuthCredentials: 5, StartTLS: 6}
    elif kind is Reject:
        expected = {MailFrom: 7, RcptTo: 7, EndOfMessage: 6, AuthCredentials: 6, StartTLS: 6}
    else:
        expected = dict.fromkeys((MailFrom, RcptTo, EndOfMessage, AuthCredentials, StartTLS), 6)
    one_reply_per_command(wire, expected[event_type])


@pytest.mark.parametrize("text", UNSAFE_TEXTS)
def test_greeting_and_hello_text_never_split(text: str) -> None:
    conn = ServerConnection(dataclasses.replace(FULL, banner=text))
    conn.next_event()
    one_reply_per_command(send_and_get(conn, Accept()), 1)
    _, wire = receive_and_get(conn, b"HELO c\r\n", lambda e: Accept(text))
    one_reply_per_command(wire, 1)
    _, wire = receive_and_get(conn, b"HELO c\r\n", lambda e: Reply(code=250, text=(text, text)))
    one_reply_per_command(wire, 1)
    conn = ServerConnection(FULL)
    conn.next_event()
    one_reply_per_command(send_and_get(conn, Reject(text=text)), 1)


def test_non_ascii_reply_text_is_utf8() -> None:
    conn = session()
    mail = b"MAIL FROM:<a@example.org>\r\n"
    _, wire = receive_and_get(conn, mail, lambda e: Accept("d\u00e9j\u00e0"))
    assert wire == "250 2.1.0 d\u00e9j\u00e0\r\n".encode()


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"code": 199}, ValueError),
        ({"code": 600}, ValueError),
        ({"code": 250, "text": "a string"}, TypeError),
        ({"code": 250, "enhanced": "5.0.0"}, ValueError),
        ({"code": 550, "enhanced": "5.0"}, ValueError),
        ({"code": 550, "enhanced": "5.0.0.0"}, ValueError),
        ({"code": 550, "enhanced": "3.0.0"}, ValueError),
        ({"code": 550, "enhanced": "5.1000.0"}, ValueError),
    ],
)
def test_invalid_replies(kwargs: dict, error: type) -> None:
    with pytest.raises(error):
        Reply(**kwargs)


@pytest.mark.parametrize(
    "make", [lambda: Reject(200), lambda: Reject(600), lambda: Close(399), lambda: Close(600)]
)
def test_invalid_decisions(make: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        make()


def test_reply_is_positive() -> None:
    assert Reply(code=354).is_positive
    assert not Reply(code=421).is_positive


def test_many_distinct_replies_are_all_formatted() -> None:
    """Application texts are endless; each reply is right however many were seen before."""
    conn = session(dataclasses.replace(FULL, junk_command_limit=1000))
    for i in range(600):
        mail = b"MAIL FROM:<a@example.org>\r\nRSET\r\n"
        _, wire = receive_and_get(conn, mail, lambda e, i=i: Accept(f"sender {i} ok"))
        assert wire == f"250 2.1.0 sender {i} ok\r\n250 2.0.0 Ok\r\n".encode()
