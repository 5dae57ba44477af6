"""Bounds: line length, buffer sizes, message size, recipients, errors.

The buffer checks look at `conn._buf`, the one private field these tests inspect: memory
use is not observable from the wire.
"""

from __future__ import annotations

import dataclasses
import gc
import sys

import pytest
from helpers import (
    ENVELOPE,
    FEEDERS,
    FULL,
    aborted,
    codes,
    content_of,
    joined,
    receive_and_get,
    receive_pieces,
    session,
)

from smtp_core import (
    AbortReason,
    Closed,
    CloseReason,
    EndOfMessage,
    Event,
    MailFrom,
    MessageData,
    ServerConnection,
    State,
)

PIECE = 64 * 1024
#: The engine reads a SASL line of max_auth_line octets plus "AUTH", a mechanism name and CRLF.
AUTH_SLACK = 28


def feed_endless(conn: ServerConnection, total: int, byte: bytes = b"x") -> int:
    """Feed `total` bytes without a line end; returns the largest buffer seen."""
    largest = 0
    piece = byte * PIECE
    for _ in range(total // PIECE):
        events, wire = receive_and_get(conn, piece)
        assert (events, wire) == ([], b"")
        largest = max(largest, len(conn._buf))
    return largest


@pytest.mark.parametrize("ending", [b"\r\n", b"\n"])
def test_endless_command_line_is_bounded_and_answered_once(ending: bytes) -> None:
    conn = session()
    largest = feed_endless(conn, 10 * 1024 * 1024)
    assert largest <= FULL.max_auth_line + AUTH_SLACK + PIECE
    events, wire = receive_and_get(conn, b"tail" + ending + b"NOOP\r\n")
    assert events == []
    assert wire == b"500 5.5.2 Error: line too long\r\n250 2.0.0 Ok\r\n"
    assert conn.state is State.READY


def test_endless_sasl_line_is_bounded_and_ends_the_exchange() -> None:
    conn = session()
    assert receive_and_get(conn, b"AUTH LOGIN\r\n")[1] == b"334 VXNlcm5hbWU6\r\n"
    largest = feed_endless(conn, 2 * 1024 * 1024, b"A")
    assert largest <= FULL.max_auth_line + AUTH_SLACK + PIECE
    _, wire = receive_and_get(conn, b"\r\nNOOP\r\n")
    assert wire == (
        b"500 5.5.6 Error: authentication exchange line is too long\r\n250 2.0.0 Ok\r\n"
    )
    assert conn.state is State.READY


def padded(prefix: bytes, total: int) -> bytes:
    """`prefix` + an ORCPT address padded so that the line is `total` octets with CRLF."""
    head = prefix + b" ORCPT=rfc822;"
    tail = b"@example.org\r\n"
    line = head + b"x" * (total - len(head) - len(tail)) + tail
    assert len(line) == total
    return line


@pytest.mark.parametrize("limit", [512, 2048])
def test_command_line_limit_includes_crlf(limit: int) -> None:
    conn = session(dataclasses.replace(FULL, max_command_line=limit))
    receive_and_get(conn, b"MAIL FROM:<a@example.org>\r\n")
    events, wire = receive_and_get(conn, padded(b"RCPT TO:<b@example.org>", limit))
    assert len(events) == 1
    assert wire == b"250 2.1.5 Ok\r\n"
    events, wire = receive_and_get(conn, padded(b"RCPT TO:<c@example.org>", limit + 1))
    assert events == []
    assert wire == b"500 5.5.2 Error: line too long\r\n"


def test_a_512_octet_rcpt_is_accepted_by_default() -> None:
    conn = session()
    receive_and_get(conn, b"MAIL FROM:<a@example.org>\r\n")
    _, wire = receive_and_get(conn, padded(b"RCPT TO:<b@example.org> NOTIFY=NEVER", 512))
    assert wire == b"250 2.1.5 Ok\r\n"


def test_oversized_message_is_counted_discarded_and_refused_with_552() -> None:
    config = dataclasses.replace(FULL, max_message_size=100_000)
    conn = session(config)
    receive_and_get(conn, ENVELOPE + b"DATA\r\n")
    largest = 0
    events: list[Event] = []
    for _ in range(40):
        more, wire = receive_and_get(conn, b"0123456789abcd\r\n" * (PIECE // 16))
        assert wire == b""
        events += more
        largest = max(largest, len(conn._buf))
    assert largest <= 4  # the content left as it came; past the limit it was dropped
    assert [type(e) for e in joined(events)] == [MessageData]
    assert len(content_of(events)) <= config.max_message_size
    events, wire = receive_and_get(conn, b".\r\nMAIL FROM:<a@example.org>\r\n")
    assert wire == b"552 5.3.4 Error: message too large\r\n250 2.1.0 Ok\r\n"
    assert events[0] == aborted(AbortReason.TOO_LARGE)
    assert [type(e) for e in events[1:]] == [MailFrom]


@pytest.mark.parametrize("cut", range(6))
def test_end_of_oversized_message_found_across_discards(cut: int) -> None:
    conn = session(dataclasses.replace(FULL, max_message_size=100))
    receive_and_get(conn, ENVELOPE + b"DATA\r\n")
    end = b"\r\n.\r\n"
    _, wire = receive_pieces(conn, [b"y" * 1000 + end[:cut], end[cut:] + b"NOOP\r\n"])
    assert wire == b"552 5.3.4 Error: message too large\r\n250 2.0.0 Ok\r\n"


@pytest.mark.parametrize(("size", "accepted"), [(99, True), (100, True), (101, False)])
def test_message_size_boundary(size: int, accepted: bool) -> None:
    conn = session(dataclasses.replace(FULL, max_message_size=100))
    receive_and_get(conn, ENVELOPE + b"DATA\r\n")
    text = b"z" * (size - 2) + b"\r\n"
    events, wire = receive_and_get(conn, text + b".\r\n")
    if accepted:
        assert [type(e) for e in events] == [MessageData, EndOfMessage]
    else:
        assert wire == b"552 5.3.4 Error: message too large\r\n"


def test_too_many_recipients_get_452_which_is_not_an_error() -> None:
    config = dataclasses.replace(FULL, max_recipients=2, max_errors=3)
    conn = session(config)
    rcpts = b"".join(b"RCPT TO:<r%d@example.org>\r\n" % i for i in range(6))
    events, wire = receive_and_get(conn, b"MAIL FROM:<a@example.org>\r\n" + rcpts)
    assert codes(wire) == [250, 250, 250, 452, 452, 452, 452]
    assert wire.endswith(b"452 4.5.3 Error: too many recipients\r\n")
    assert conn.recipients == ("r0@example.org", "r1@example.org")
    events, wire = receive_and_get(conn, b"DATA\r\n.\r\n")
    assert codes(wire) == [354, 250]
    assert isinstance(events[0], EndOfMessage)
    assert events[0].recipients == ("r0@example.org", "r1@example.org")


@pytest.mark.parametrize(
    "line", [b"XYZZY", b"", b"MAIL FROM:<bad", b"RCPT TO:<a@example.org>", b"EXPN x"]
)
def test_max_errors_then_421_and_close(line: bytes) -> None:
    conn = session(dataclasses.replace(FULL, max_errors=3))
    events, wire = receive_and_get(conn, (line + b"\r\n") * 5)
    assert codes(wire) == [codes(wire)[0]] * 3 + [421]
    assert wire.endswith(b"421 4.7.0 mx.example.org Error: too many errors\r\n")
    assert events == [Closed(reason=CloseReason.ERRORS)]


def test_errors_accumulate_across_transactions() -> None:
    conn = session(dataclasses.replace(FULL, max_errors=2))
    _, wire = receive_and_get(conn, b"XYZZY\r\nRSET\r\nNOOP\r\n" + ENVELOPE + b"DATA now\r\n")
    assert codes(wire) == [500, 250, 250, 250, 250, 501, 421]


@pytest.mark.parametrize(
    "data",
    [b"\r\n", b"XYZZY\r\n", b"MAIL FROM:<bad\r\n", b"AUTH PLAIN !!\r\n", b"NOOP\r\n"],
    ids=["empty line", "unknown", "syntax", "sasl", "ok"],
)
def test_a_finished_connection_is_freed(data: bytes) -> None:
    """Nothing global keeps a connection alive: no cached exception holding its frames.

    Counted with sys.getrefcount rather than a weakref, so that it also holds for the mypyc
    build, whose classes take no weak references."""
    for _ in range(3):
        conn = session()
        receive_and_get(conn, data * 3)
        gc.collect()
        assert sys.getrefcount(conn) == 2  # our variable and getrefcount's own argument
        del conn


@pytest.mark.parametrize("feed", FEEDERS)
@pytest.mark.parametrize("size", [1, 2, 3])
def test_tiny_size_limit_still_finds_the_end_of_an_empty_message(feed: str, size: int) -> None:
    conn = session(dataclasses.replace(FULL, max_message_size=size))
    receive_and_get(conn, ENVELOPE + b"DATA\r\n")
    events, wire = FEEDERS[feed](conn, b".\r\nDATA\r\n")
    assert [type(e) for e in events] == [EndOfMessage]
    assert wire == b"250 2.0.0 Ok\r\n503 5.5.1 Error: need MAIL command\r\n"
    receive_and_get(conn, ENVELOPE + b"DATA\r\n")
    _, wire = FEEDERS[feed](conn, b"abcd\r\n.\r\nNOOP\r\n")
    assert wire == b"552 5.3.4 Error: message too large\r\n250 2.0.0 Ok\r\n"
