"""Property tests (Hypothesis): split invariance, no exception for any peer input, bounded
buffers. The last one inspects the private receive buffer, as memory is not on the wire.

Message content leaves in `MessageData` pieces whose boundaries follow the input's; what they
add up to, and every other event and byte of output, must not (`helpers.joined`)."""

from __future__ import annotations

import base64
import dataclasses
import itertools

from helpers import FULL, accept_all, content_of, drain, joined, replies, send_and_get
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from smtp_core import (
    CHUNK_SIZE,
    DECISION_EVENTS,
    Accept,
    Answer,
    AuthCredentials,
    Close,
    Closed,
    Config,
    EndOfMessage,
    Event,
    MailFrom,
    MessageAborted,
    MessageData,
    RcptTo,
    Reject,
    Reply,
    ServerConnection,
    State,
)

SETTINGS = settings(
    deadline=None,
    max_examples=150,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

#: Small limits, so that random input reaches them.
SMALL = dataclasses.replace(
    FULL,
    max_message_size=3000,
    max_recipients=3,
    max_command_line=512,
    max_auth_line=1024,
    max_errors=8,
    max_auth_failures=2,
)
CONFIGS = [
    FULL,
    SMALL,
    dataclasses.replace(SMALL, bare_line_endings="normalize", max_text_line=40),
    dataclasses.replace(SMALL, lmtp=True),
    Config(enhanced_status_codes=False, chunking=False, smtputf8=False, dsn=False),
    dataclasses.replace(FULL, max_command_line=20000, max_auth_line=20000),
]
#: What the engine may hold beyond the bounds: a SASL line's "AUTH <mechanism> " and CRLF.
AUTH_SLACK = 28

LINES = [
    b"EHLO client.example",
    b"HELO client.example",
    b"LHLO client.example",
    b"MAIL FROM:<a@example.org>",
    b"MAIL FROM:<> SIZE=100 BODY=8BITMIME",
    b"MAIL FROM:<a@example.org> SMTPUTF8 RET=FULL ENVID=x+2By",
    "MAIL FROM:<\u00e9@example.org> SMTPUTF8".encode(),
    b"MAIL FROM:<a@example.org> SIZE=99999999999999999999",
    b"RCPT TO:<b@example.org>",
    b"RCPT TO:<c@example.org> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;c+40example.org",
    b"RCPT TO:<reject@example.org>",
    b"DATA",
    b"BDAT 5",
    b"BDAT 0 LAST",
    b"BDAT 3 LAST",
    b"RSET",
    b"NOOP",
    b"HELP",
    b"VRFY x",
    b"EXPN x",
    b"STARTTLS",
    b"AUTH PLAIN",
    b"AUTH LOGIN",
    b"AUTH PLAIN " + base64.b64encode(b"\0u\0p"),
    base64.b64encode(b"user"),
    b"*",
    b"=",
    b".",
    b"..",
    b"",
    b"QUIT",
    b"GET / HTTP/1.1",
    b"\x00\xff garbage",
    b"BDAT " + b"9" * 5000,
    b"MAIL FROM:<a@example.org> SIZE=" + b"9" * 5000,
    b"AUTH PLAIN " + b"A" * 5000,
    b"MAIL FROM:<" + b"a" * 5000 + b"@example.org>",
]

line_strategy = st.one_of(
    st.sampled_from(LINES),
    st.binary(max_size=40),
    st.sampled_from(LINES).map(lambda line: line + b"x" * 600),
)
ending_strategy = st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r", b""])
session_strategy = st.lists(st.tuples(line_strategy, ending_strategy), max_size=30).map(
    lambda items: b"".join(line + ending for line, ending in items)
)


def cut(data: bytes, points: list[int]) -> list[bytes]:
    """`data` cut at `points`, without empty pieces (b"" would mean EOF)."""
    bounds = [0, *sorted(points), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if a < b]


def stable_policy(event: Event) -> Answer:
    """A deterministic policy that still exercises every kind of answer."""
    if isinstance(event, RcptTo) and event.recipient.startswith("reject"):
        return Reject()
    if isinstance(event, MailFrom) and event.params.size == 100:
        return Reject(451)
    if isinstance(event, AuthCredentials):
        return Reject()
    return Accept()


def run(config: Config, pieces: list[bytes]) -> tuple[list[Event], bytes]:
    conn = ServerConnection(config)
    events, out = drain(conn, stable_policy)
    for piece in pieces:
        if (events and isinstance(events[-1], Closed)) or conn.state is State.STARTTLS:
            break  # over, or what follows belongs to a TLS handshake
        conn.receive_data(piece)
        more, wire = drain(conn, stable_policy)
        events += more
        out += wire
    return joined(events), out


@SETTINGS
@given(config=st.sampled_from(CONFIGS), data=session_strategy, split=st.data())
def test_any_split_gives_the_same_events_and_bytes(
    config: Config, data: bytes, split: st.DataObject
) -> None:
    pieces = cut(data, split.draw(st.lists(st.integers(0, len(data)), max_size=12)))
    assert run(config, pieces) == run(config, [data] if data else [])


def random_answer(draw: st.DataObject, event: Event, lmtp: bool) -> Answer:
    answers: list[Answer] = [
        Accept(),
        Accept("custom\r\ntext"),
        Reject(),
        Reject(451, "later"),
        Reject(421),
        Close(),
        Reply(code=250, text=("a", "b")),
        Reply(code=554, text=("no",), enhanced="5.7.1"),
    ]
    if lmtp and isinstance(event, EndOfMessage):
        answers.append({rcpt: Accept() for rcpt in event.recipients})
    return draw.draw(st.sampled_from(answers))


@SETTINGS
@given(
    config=st.sampled_from(CONFIGS),
    tls=st.booleans(),
    auto=st.frozensets(st.sampled_from(DECISION_EVENTS)),
    chunks=st.lists(st.one_of(session_strategy, st.binary(max_size=200)), max_size=8),
    draw=st.data(),
)
def test_peer_input_never_raises_and_output_is_always_well_formed(
    config: Config,
    tls: bool,
    auto: frozenset[type[Event]],
    chunks: list[bytes],
    draw: st.DataObject,
) -> None:
    conn = ServerConnection(config, tls=tls, auto_accept=auto)
    wire = bytearray()
    closed = 0
    for chunk in [*filter(None, chunks), b""]:
        if conn.state is State.STARTTLS:
            if not draw.draw(st.booleans()):
                break  # the handshake fails: the transport closes the socket
            conn.tls_started()
        conn.receive_data(chunk)
        while True:
            event = conn.next_event()
            if isinstance(event, Closed):
                closed += 1
                break
            if not isinstance(event, Event):
                break
            if isinstance(event, DECISION_EVENTS):
                wire += send_and_get(conn, random_answer(draw, event, config.lmtp))
        wire += conn.data_to_send()
        if closed:
            break
    replies(bytes(wire))  # every byte belongs to a well-formed reply
    assert closed or conn.state is State.STARTTLS


@SETTINGS
@given(
    config=st.sampled_from(CONFIGS[1:4]),
    chunks=st.lists(
        st.one_of(
            session_strategy,
            st.binary(min_size=1000, max_size=5000),
            st.builds(lambda n, b: b * n, st.integers(1, 5000), st.sampled_from([b"x", b"\r\n"])),
        ),
        max_size=10,
    ),
)
def test_no_buffer_grows_past_its_bound(config: Config, chunks: list[bytes]) -> None:
    conn = ServerConnection(config)
    drain(conn)
    # No message is held: the content leaves as it arrives, whatever its size.
    bound = config.max_auth_line + AUTH_SLACK
    for chunk in filter(None, chunks):
        conn.receive_data(chunk)
        events, _ = drain(conn, accept_all)
        if events and isinstance(events[-1], Closed):
            break
        if conn.state is State.STARTTLS:
            conn.tls_started()
            continue
        assert len(conn._buf._data) <= bound + len(chunk)


ENVELOPE = b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\n"
content_line = st.one_of(
    st.sampled_from([b"", b".", b"..", b".x", b"x.", b"a\rb", b"a\nb", b"x" * 70, b"QUIT"]),
    st.binary(max_size=30),
)
text_strategy = st.lists(st.tuples(content_line, ending_strategy), max_size=20).map(
    lambda items: b"".join(line + ending for line, ending in items)
)
#: A line longer than one MessageData piece: the reader must cut it short of a CRLF.
LONG = b"y" * (CHUNK_SIZE + 100)
MESSAGE_CONFIGS = [
    FULL,
    dataclasses.replace(SMALL, max_message_size=CHUNK_SIZE * 3),
    dataclasses.replace(FULL, bare_line_endings="normalize"),
    dataclasses.replace(FULL, max_text_line=40),
    dataclasses.replace(FULL, max_message_size=50),
]


def message_input(text: bytes, chunk: bytes, long: bool) -> bytes:
    body = text + (LONG + b"\r\n" + text if long else b"")
    bdat = b"BDAT %d\r\n" % len(chunk) + chunk + b"BDAT %d LAST\r\n" % len(text) + text
    return ENVELOPE + b"DATA\r\n" + body + b"\r\n.\r\n" + ENVELOPE + bdat + b"QUIT\r\n"


@SETTINGS
@given(
    config=st.sampled_from(MESSAGE_CONFIGS),
    text=text_strategy,
    chunk=text_strategy,
    long=st.booleans(),
    split=st.data(),
)
def test_message_content_is_the_same_however_it_is_split(
    config: Config, text: bytes, chunk: bytes, long: bool, split: st.DataObject
) -> None:
    """DATA and BDAT content: dot-unstuffing, the bare CR/LF check, the size and line limits
    and the end of data hold across every split, pieces of the DATA line and its "." too."""
    data = message_input(text, chunk, long)
    points = split.draw(st.lists(st.integers(0, len(data)), max_size=12))
    whole = run(config, [data])
    assert run(config, cut(data, points)) == whole
    events = whole[0]
    ends = [e for e in events if isinstance(e, (EndOfMessage, MessageAborted))]
    # The DATA message ends one way or the other; the BDAT one may never begin (a first chunk
    # over the size limit is refused whole); no content is left hanging after the last end.
    assert 1 <= len(ends) <= 2
    last_end = max(i for i, e in enumerate(events) if isinstance(e, (EndOfMessage, MessageAborted)))
    assert not any(isinstance(e, MessageData) for e in events[last_end:])
    for end in ends:
        if isinstance(end, EndOfMessage):
            assert end.size <= config.max_message_size


def unstuffed(text: bytes) -> bytes:
    """The reference: RFC 5321 4.5.2 on a whole text, line by line."""
    lines = text.split(b"\r\n")
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)


clean_line = content_line.map(lambda line: line.replace(b"\r", b"").replace(b"\n", b""))


@SETTINGS
@given(lines=st.lists(clean_line, max_size=20), long=st.booleans(), split=st.data())
def test_data_content_is_the_text_unstuffed(
    lines: list[bytes], long: bool, split: st.DataObject
) -> None:
    assume(b"." not in lines)  # a lone dot would be the end of data
    if long:
        lines = [*lines, LONG, *lines]
    body = b"".join(line + b"\r\n" for line in lines)
    data = ENVELOPE + b"DATA\r\n" + body + b".\r\nQUIT\r\n"
    points = split.draw(st.lists(st.integers(0, len(data)), max_size=12))
    events, _ = run(FULL, cut(data, points))
    assert content_of(events) == unstuffed(body)
    [end] = [e for e in events if isinstance(e, EndOfMessage)]
    assert end.size == len(unstuffed(body))
