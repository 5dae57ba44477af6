"""DATA: framing, dot-unstuffing, bare line endings and smuggling, message answers."""

from __future__ import annotations

import dataclasses

import pytest
from helpers import (
    ENVELOPE,
    FEEDERS,
    FULL,
    aborted,
    codes,
    message,
    receive_and_get,
    receive_pieces,
    reject,
    session,
)

from smtp_core import (
    AbortReason,
    Close,
    Closed,
    CloseReason,
    Config,
    EndOfMessage,
    MailFrom,
    MailParams,
    MessageData,
    RcptParams,
    RcptTo,
    Reject,
    ServerConnection,
    State,
)

NORMALIZE = dataclasses.replace(FULL, bare_line_endings="normalize")
OK_354 = b"354 End data with <CR><LF>.<CR><LF>\r\n"


def in_data(config: Config = FULL) -> ServerConnection:
    conn = session(config)
    _, wire = receive_and_get(conn, ENVELOPE + b"DATA\r\n")
    assert wire.endswith(OK_354)
    assert conn.state is State.DATA
    return conn


@pytest.mark.parametrize("feed", FEEDERS)
@pytest.mark.parametrize(
    ("text", "content"),
    [
        (b"Subject: hi\r\n\r\nbody\r\n.\r\n", b"Subject: hi\r\n\r\nbody\r\n"),
        (b".\r\n", b""),
        (b"\r\n.\r\n", b"\r\n"),
        (b"x\r\n.\r\n", b"x\r\n"),
        (b"..\r\n.\r\n", b".\r\n"),
        (b"..hidden\r\n.\r\n", b".hidden\r\n"),
        (b"a\r\n..b\r\n...\r\n. x\r\n.\r\n", b"a\r\n.b\r\n..\r\n x\r\n"),
        (b"\xe2\x82\xac 8-bit \xff\x00 kept\r\n.\r\n", b"\xe2\x82\xac 8-bit \xff\x00 kept\r\n"),
        (b"no final newline.\r\n.\r\n", b"no final newline.\r\n"),
        (b"a.\r\n.b\r\n.\r\n", b"a.\r\nb\r\n"),
    ],
    ids=[
        "simple",
        "empty",
        "empty line",
        "one line",
        "lone stuffed dot",
        "first line stuffed",
        "stuffed lines",
        "8-bit",
        "dot at end of line",
        "dot line start",
    ],
)
def test_message_content(feed: str, text: bytes, content: bytes) -> None:
    conn = in_data()
    events, wire = FEEDERS[feed](conn, text)
    assert events == message(content)
    assert wire == b"250 2.0.0 Ok\r\n"
    assert conn.state is State.READY
    assert conn.sender is None
    assert conn.recipients == ()


@pytest.mark.parametrize("feed", FEEDERS)
def test_message_with_trailing_commands(feed: str) -> None:
    conn = in_data()
    events, wire = FEEDERS[feed](conn, b"hello\r\n.\r\nMAIL FROM:<c@example.org>\r\nNOOP\r\n")
    assert events == [*message(b"hello\r\n"), MailFrom(sender="c@example.org", params=MailParams())]
    assert wire == b"250 2.0.0 Ok\r\n250 2.1.0 Ok\r\n250 2.0.0 Ok\r\n"


def test_whole_transaction_bytewise_from_mail_to_message() -> None:
    conn = session()
    data = ENVELOPE + b"DATA\r\n.\r\n"
    events, wire = FEEDERS["bytewise"](conn, data)
    assert events[-1:] == message(b"")
    assert wire == b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n" + OK_354 + b"250 2.0.0 Ok\r\n"


TEXT = b"line one\r\n..stuffed\r\n\r\n.\r\nNOOP\r\n"


@pytest.mark.parametrize("first", range(len(TEXT) + 1))
def test_split_anywhere_in_two(first: int) -> None:
    conn = in_data()
    events, wire = receive_pieces(conn, [TEXT[:first], TEXT[first:]])
    assert events == message(b"line one\r\n.stuffed\r\n\r\n")
    assert wire == b"250 2.0.0 Ok\r\n250 2.0.0 Ok\r\n"


DOTTED = b"a\r\n.b\r\n.\r\n"


@pytest.mark.parametrize(
    "cut", [(a, b) for a in range(len(DOTTED) + 1) for b in range(a, len(DOTTED) + 1)]
)
def test_a_dot_line_is_unstuffed_wherever_the_pieces_split(cut: tuple[int, int]) -> None:
    """The end-of-data scan also notices dot-stuffed lines; a CRLF "." cut at any point must
    still be told apart from the terminator."""
    a, b = cut
    conn = in_data()
    events, _ = receive_pieces(conn, [DOTTED[:a], DOTTED[a:b], DOTTED[b:]])
    assert events == message(b"a\r\nb\r\n")


def test_dot_lines_are_tracked_per_message() -> None:
    conn = in_data()
    events, _ = receive_and_get(conn, b"plain\r\n.\r\n" + ENVELOPE + b"DATA\r\nx\r\n..y\r\n.\r\n")
    assert [e for e in events if isinstance(e, (MessageData, EndOfMessage))] == [
        *message(b"plain\r\n"),
        *message(b"x\r\n.y\r\n"),
    ]


@pytest.mark.parametrize("cut", [(0, 1), (1, 2), (2, 3), (0, 2), (1, 3), (0, 3)])
def test_terminator_split_in_three_right_after_data(cut: tuple[int, int]) -> None:
    """The DATA line's CRLF is the terminator's first CRLF: ".\r\n" alone ends the message."""
    a, b = cut
    conn = in_data()
    events, _ = receive_pieces(conn, [b".\r\n"[:a], b".\r\n"[a:b], b".\r\n"[b:]])
    assert events == message(b"")


def test_a_dot_right_after_data_is_not_the_end_without_its_crlf() -> None:
    conn = in_data()
    assert receive_and_get(conn, b".") == ([], b"")
    assert receive_and_get(conn, b"x\r\n.\r\n") == (message(b"x\r\n"), b"250 2.0.0 Ok\r\n")


SMUGGLE_ENDINGS = [b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n", b"\n.\r", b"\r.\n"]
SMUGGLED = b"MAIL FROM:<evil@example.net>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\nforged\r\n"


@pytest.mark.parametrize("feed", FEEDERS)
@pytest.mark.parametrize("ending", SMUGGLE_ENDINGS)
@pytest.mark.parametrize("where", ["middle", "start"])
def test_smuggling_endings_never_end_data_and_are_rejected(
    feed: str, ending: bytes, where: str
) -> None:
    conn = in_data()
    text = (b"" if where == "start" else b"real text") + ending + SMUGGLED + b".\r\nNOOP\r\n"
    events, wire = FEEDERS[feed](conn, text)
    assert events == [aborted(AbortReason.BARE_LINE_ENDING)]
    assert wire == b"550 5.5.2 Error: bare CR or LF in message text\r\n250 2.0.0 Ok\r\n"
    assert conn.state is State.READY
    assert conn.recipients == ()


@pytest.mark.parametrize("ending", SMUGGLE_ENDINGS)
def test_smuggling_endings_normalized_stay_inside_the_message(ending: bytes) -> None:
    conn = in_data(NORMALIZE)
    events, wire = receive_and_get(conn, b"real text" + ending + SMUGGLED + b".\r\n")
    assert wire == b"250 2.0.0 Ok\r\n"
    # The bare ending becomes CRLF, and the lone dot an empty (unstuffed) line of text.
    assert events == message(b"real text\r\n\r\n" + SMUGGLED)


@pytest.mark.parametrize(
    ("text", "content"),
    [
        (b"a\nb\r\n.\r\n", b"a\r\nb\r\n"),
        (b"a\rb\r\n.\r\n", b"a\r\nb\r\n"),
        (b"a\n\rb\r\n.\r\n", b"a\r\n\r\nb\r\n"),
        (b"\n..x\r\n.\r\n", b"\r\n.x\r\n"),
        (b"a\r\r\n.\r\n", b"a\r\n\r\n"),
    ],
)
def test_normalize_bare_line_endings(text: bytes, content: bytes) -> None:
    events, wire = receive_and_get(in_data(NORMALIZE), text)
    assert events == message(content)
    assert wire == b"250 2.0.0 Ok\r\n"


@pytest.mark.parametrize("text", [b"a\nb\r\n.\r\n", b"a\rb\r\n.\r\n", b"a\r\r\n.\r\n"])
def test_bare_line_endings_rejected_by_default_and_session_goes_on(text: bytes) -> None:
    conn = in_data()
    events, wire = receive_and_get(conn, text + ENVELOPE)
    assert events == [
        aborted(AbortReason.BARE_LINE_ENDING),
        MailFrom(sender="alice@example.org", params=MailParams()),
        RcptTo(recipient="bob@example.org", params=RcptParams()),
    ]
    assert codes(wire) == [550, 250, 250]


def test_max_text_line() -> None:
    config = dataclasses.replace(FULL, max_text_line=10)
    conn = in_data(config)
    events, wire = receive_and_get(conn, b"0123456789\r\n.\r\n")
    assert events == message(b"0123456789\r\n")
    receive_and_get(conn, ENVELOPE + b"DATA\r\n")
    events, wire = receive_and_get(conn, b"short\r\n0123456789A\r\n.\r\nNOOP\r\n")
    assert events == [aborted(AbortReason.LINE_TOO_LONG)]
    assert wire == b"500 5.5.6 Error: message line too long\r\n250 2.0.0 Ok\r\n"


@pytest.mark.parametrize(
    ("answer", "wire"),
    [
        (Reject(), b"554 5.7.1 Error: message rejected\r\n"),
        (Reject(451, "try later"), b"451 4.7.1 try later\r\n"),
        (Reject(550), b"550 5.7.1 Error: message rejected\r\n"),
    ],
)
def test_rejected_message_ends_the_transaction(answer: Reject, wire: bytes) -> None:
    conn = in_data()
    _, out = receive_and_get(conn, b"x\r\n.\r\n", reject(EndOfMessage, answer=answer))
    assert out == wire
    assert conn.state is State.READY
    assert conn.recipients == ()


def test_close_answer_to_message() -> None:
    conn = in_data()
    events, wire = receive_and_get(
        conn, b"x\r\n.\r\nNOOP\r\n", reject(EndOfMessage, answer=Close())
    )
    assert wire == b"421 4.7.0 mx.example.org Error: closing connection\r\n"
    assert events[-1] == Closed(reason=CloseReason.REFUSED)


@pytest.mark.parametrize("text", [b"", b"partial", b"partial\r\n", b"partial\r\n."])
def test_eof_during_data_closes_without_a_message(text: bytes) -> None:
    conn = in_data()
    if text:
        receive_and_get(conn, text)
    events, wire = receive_and_get(conn, b"")
    assert events == [aborted(AbortReason.CLOSED), Closed(reason=CloseReason.EOF)]
    assert wire == b""
    assert conn.state is State.CLOSED
