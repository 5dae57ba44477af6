"""Property tests (Hypothesis): split invariance, no exception for any peer input, bounded
buffers. The last one inspects the private receive buffer, as memory is not on the wire."""

from __future__ import annotations

import base64
import dataclasses
import itertools

from helpers import FULL, accept_all, drain, replies, send_and_get
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtp_core import (
    DECISION_EVENTS,
    Accept,
    Answer,
    AuthCredentials,
    Close,
    Closed,
    Config,
    Event,
    MailFrom,
    Message,
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
    return events, out


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
    if lmtp and isinstance(event, Message):
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
    bound = max(config.max_auth_line + AUTH_SLACK, config.max_message_size)
    for chunk in filter(None, chunks):
        conn.receive_data(chunk)
        events, _ = drain(conn, accept_all)
        if events and isinstance(events[-1], Closed):
            break
        if conn.state is State.STARTTLS:
            conn.tls_started()
            continue
        assert len(conn._buf._data) <= bound + len(chunk)
        assert len(conn._chunks) <= config.max_message_size
