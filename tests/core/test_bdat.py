"""BDAT (RFC 3030): chunks, no dot handling, refused chunks that are still consumed."""

from __future__ import annotations

import dataclasses

import pytest
from helpers import (
    ENVELOPE,
    FEEDERS,
    FULL,
    aborted,
    codes,
    content_of,
    message,
    receive_and_get,
    reject,
    session,
)

from smtp_core import (
    CHUNK_SIZE,
    AbortReason,
    Closed,
    CloseReason,
    Config,
    Hello,
    MessageData,
    RcptTo,
    Reset,
    ServerConnection,
    State,
)


def in_transaction(config: Config = FULL) -> ServerConnection:
    conn = session(config)
    receive_and_get(conn, ENVELOPE)
    assert conn.state is State.RCPT
    return conn


@pytest.mark.parametrize("feed", FEEDERS)
@pytest.mark.parametrize(
    ("data", "content", "wire"),
    [
        (b"BDAT 5 LAST\r\nhello", b"hello", b"250 2.0.0 Ok\r\n"),
        (b"bdat 5 last\r\nhello", b"hello", b"250 2.0.0 Ok\r\n"),
        (b"BDAT 0 LAST\r\n", b"", b"250 2.0.0 Ok\r\n"),
        (
            b"BDAT 3\r\nabcBDAT 4\r\ndefgBDAT 0 LAST\r\n",
            b"abcdefg",
            b"250 2.0.0 3 octets received\r\n250 2.0.0 7 octets received\r\n250 2.0.0 Ok\r\n",
        ),
        (
            b"BDAT 0\r\nBDAT 2 LAST\r\nab",
            b"ab",
            b"250 2.0.0 0 octets received\r\n250 2.0.0 Ok\r\n",
        ),
        (
            b"BDAT 11 LAST\r\n.\r\n..x\r\n.\r\n",
            b".\r\n..x\r\n.\r\n",
            b"250 2.0.0 Ok\r\n",
        ),
        (
            b"BDAT 12 LAST\r\nQUIT\r\nRSET\r\n",
            b"QUIT\r\nRSET\r\n",
            b"250 2.0.0 Ok\r\n",
        ),
    ],
    ids=["one chunk", "lower case", "empty", "three chunks", "empty first", "dots", "commands"],
)
def test_chunks_are_taken_verbatim(feed: str, data: bytes, content: bytes, wire: bytes) -> None:
    conn = in_transaction()
    events, out = FEEDERS[feed](conn, data + b"NOOP\r\n")
    assert events == message(content)
    assert out == wire + b"250 2.0.0 Ok\r\n"
    assert conn.state is State.READY
    assert conn.recipients == ()


def test_chunking_state_between_chunks() -> None:
    conn = in_transaction()
    first, _ = receive_and_get(conn, b"BDAT 3\r\nabc")
    assert conn.state is State.CHUNKING
    _, wire = receive_and_get(conn, b"DATA\r\nRCPT TO:<c@example.org>\r\nMAIL FROM:<>\r\n")
    assert codes(wire) == [503, 503, 503]
    events, _ = receive_and_get(conn, b"BDAT 1 LAST\r\nd")
    assert content_of(first + events) == b"abcd"
    assert events[-1] == message(b"abcd")[-1]


@pytest.mark.parametrize("command", [b"RSET", b"EHLO c.example"])
def test_rset_and_ehlo_abandon_chunks(command: bytes) -> None:
    conn = in_transaction()
    receive_and_get(conn, b"BDAT 3\r\nabc")
    events, _ = receive_and_get(conn, command + b"\r\n")
    assert events[0] == aborted(AbortReason.RESET)  # first: the content given so far is void
    assert [type(e) for e in events[1:]] == [Reset if command == b"RSET" else Hello]
    assert conn.state is State.READY
    events, wire = receive_and_get(conn, ENVELOPE + b"BDAT 1 LAST\r\nz")
    assert events[-2:] == message(b"z")
    assert codes(wire) == [250, 250, 250]


@pytest.mark.parametrize("feed", FEEDERS)
@pytest.mark.parametrize(
    ("setup", "wire"),
    [
        (b"", b"503 5.5.1 Error: need RCPT command\r\n"),
        (b"MAIL FROM:<a@example.org>\r\n", b"503 5.5.1 Error: need RCPT command\r\n"),
        (
            b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\n",
            b"554 5.5.1 Error: no valid recipients\r\n",
        ),
    ],
    ids=["no transaction", "no recipients", "rejected recipients"],
)
def test_refused_chunk_is_consumed_and_session_stays_in_sync(
    feed: str, setup: bytes, wire: bytes
) -> None:
    conn = session()
    if setup:
        receive_and_get(conn, setup, reject(RcptTo))
    chunk = b"QUIT\r\nMAIL FROM:<evil@example.net>\r\n"
    data = b"BDAT %d LAST\r\n" % len(chunk) + chunk + b"NOOP\r\n"
    events, out = FEEDERS[feed](conn, data)
    assert events == []
    assert out == wire + b"250 2.0.0 Ok\r\n"
    assert conn.state is not State.CLOSED


@pytest.mark.parametrize("feed", FEEDERS)
def test_oversized_chunks_are_consumed_then_552(feed: str) -> None:
    conn = in_transaction(dataclasses.replace(FULL, max_message_size=10))
    data = b"BDAT 6\r\nabcdefBDAT 6\r\nRSET\r\nBDAT 1 LAST\r\nxNOOP\r\n"
    events, out = FEEDERS[feed](conn, data)
    assert events == [aborted(AbortReason.TOO_LARGE)]
    assert out == (
        b"250 2.0.0 6 octets received\r\n"
        b"552 5.3.4 Error: message too large\r\n"
        b"503 5.5.1 Error: need RCPT command\r\n"
        b"250 2.0.0 Ok\r\n"
    )
    assert conn.state is State.READY


def test_single_oversized_chunk_and_exact_fit() -> None:
    config = dataclasses.replace(FULL, max_message_size=10)
    conn = in_transaction(config)
    _, wire = receive_and_get(conn, b"BDAT 11 LAST\r\n" + b"x" * 11)
    assert wire == b"552 5.3.4 Error: message too large\r\n"
    conn = in_transaction(config)
    events, _ = receive_and_get(conn, b"BDAT 10 LAST\r\n" + b"x" * 10)
    assert events == message(b"x" * 10)


def test_huge_chunk_size_refused_but_read() -> None:
    conn = in_transaction(dataclasses.replace(FULL, max_message_size=10))
    receive_and_get(conn, b"BDAT 99999999999999999999 LAST\r\n")
    for _ in range(10):
        assert receive_and_get(conn, b"x" * 65536) == ([], b"")
    assert len(conn._buf) == 0  # the refused chunk is dropped as it arrives


@pytest.mark.parametrize(
    "line",
    [
        b"BDAT",
        b"BDAT x",
        b"BDAT -1",
        b"BDAT 1 NOTLAST",
        b"BDAT 1 LAST more",
        b"BDAT 1  LAST",
        "BDAT \u00b2".encode(),
        b"BDAT 1.5",
    ],
)
def test_bdat_syntax_errors_consume_nothing(line: bytes) -> None:
    conn = in_transaction()
    _, wire = receive_and_get(conn, line + b"\r\nNOOP\r\n")
    assert wire == b"501 5.5.4 Syntax: BDAT count [LAST]\r\n250 2.0.0 Ok\r\n"
    assert conn.state is State.RCPT


def test_bdat_without_chunking_is_unknown_and_consumes_nothing() -> None:
    conn = in_transaction(dataclasses.replace(FULL, chunking=False))
    _, wire = receive_and_get(conn, b"BDAT 6\r\nNOOP\r\n")
    assert wire == b"500 5.5.2 Error: command not recognized\r\n250 2.0.0 Ok\r\n"


def test_data_after_bdat_is_503_and_bdat_after_data_is_text() -> None:
    conn = in_transaction()
    _, wire = receive_and_get(conn, b"BDAT 1\r\nxDATA\r\n")
    assert wire == b"250 2.0.0 1 octets received\r\n503 5.5.1 Error: BDAT in progress\r\n"
    conn = in_transaction()
    events, _ = receive_and_get(conn, b"DATA\r\nBDAT 1 LAST\r\n.\r\n")
    assert events == message(b"BDAT 1 LAST\r\n")


def test_eof_in_the_middle_of_a_chunk() -> None:
    conn = in_transaction()
    receive_and_get(conn, b"BDAT 10 LAST\r\nabc")
    events, _ = receive_and_get(conn, b"")
    assert events == [aborted(AbortReason.CLOSED), Closed(reason=CloseReason.EOF)]


@pytest.mark.parametrize("digits", [21, 5000])
def test_absurd_chunk_size_is_a_syntax_error_even_with_long_lines(digits: int) -> None:
    config = dataclasses.replace(FULL, max_command_line=20000, max_auth_line=20000)
    conn = in_transaction(config)
    _, wire = receive_and_get(conn, b"BDAT " + b"9" * digits + b" LAST\r\nNOOP\r\n")
    assert wire == b"501 5.5.4 Syntax: BDAT count [LAST]\r\n250 2.0.0 Ok\r\n"


BARE = [b"a\nb", b"a\rb", b"ab\r", b"\nab", b"a\n\rb", b"a\r\r\nb"]


@pytest.mark.parametrize("feed", FEEDERS)
@pytest.mark.parametrize("content", BARE)
def test_bare_line_endings_in_chunks_are_refused(feed: str, content: bytes) -> None:
    """A relay that sent such content on as DATA would recreate SMTP smuggling."""
    conn = in_transaction()
    data = b"BDAT %d LAST\r\n" % len(content) + content + b"NOOP\r\n"
    events, out = FEEDERS[feed](conn, data)
    assert events == [aborted(AbortReason.BARE_LINE_ENDING)]
    assert out == b"550 5.5.2 Error: bare CR or LF in message text\r\n250 2.0.0 Ok\r\n"
    assert conn.state is State.READY and conn.recipients == ()


@pytest.mark.parametrize("feed", FEEDERS)
def test_a_crlf_split_between_chunks_is_fine_a_cr_ending_the_message_is_not(feed: str) -> None:
    conn = in_transaction()
    events, out = FEEDERS[feed](conn, b"BDAT 3\r\nab\rBDAT 3 LAST\r\n\ncd")
    assert events == message(b"ab\r\ncd")
    receive_and_get(conn, ENVELOPE)
    events, out = FEEDERS[feed](conn, b"BDAT 3\r\nab\rBDAT 0 LAST\r\n")
    assert events == [aborted(AbortReason.BARE_LINE_ENDING)]
    assert codes(out) == [250, 550]


@pytest.mark.parametrize(
    ("content", "normalized"),
    [(b"a\nb", b"a\r\nb"), (b"ab\r", b"ab\r\n"), (b"a\r\r\nb", b"a\r\n\r\nb")],
)
def test_bare_line_endings_in_chunks_normalized(content: bytes, normalized: bytes) -> None:
    config = dataclasses.replace(FULL, bare_line_endings="normalize")
    for pieces in ([content], [content[:2], content[2:]]):
        conn = in_transaction(config)
        data = b"".join(b"BDAT %d\r\n" % len(p) + p for p in pieces) + b"BDAT 0 LAST\r\n"
        events, _ = receive_and_get(conn, data)
        assert events == message(normalized)


def test_content_leaves_in_bounded_pieces_and_is_never_held() -> None:
    conn = in_transaction()
    size = 3 * CHUNK_SIZE + 7
    conn.receive_data(b"BDAT %d LAST\r\n" % size + b"x" * size)
    pieces = []
    while isinstance(event := conn.next_event(), MessageData):
        pieces.append(event.data)
        assert len(conn._buf) <= size  # taken, never copied into a message buffer
    assert max(map(len, pieces)) <= CHUNK_SIZE
    assert content_of([MessageData(data=p) for p in pieces]) == b"x" * size
