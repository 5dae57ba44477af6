"""Shared helpers for the smtp_core tests: drive a ServerConnection with raw bytes.

Modelled on h11's `tests/helpers.py`: `receive_and_get()` feeds bytes, drains every event and
answers the decision events with a policy, and returns the events and the wire output.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from smtp_core import (
    DECISION_EVENTS,
    NEED_DATA,
    PAUSED,
    AbortReason,
    Accept,
    Answer,
    Closed,
    Config,
    Connected,
    EndOfMessage,
    Event,
    MailParams,
    MessageAborted,
    MessageData,
    RcptParams,
    Reject,
    ServerConnection,
)

#: What the tests answer a decision event with; None leaves the event pending.
Policy = Callable[[Event], "Answer | None"]

#: A config that offers everything the engine can do, so every command is reachable.
FULL = Config(
    hostname="mx.example.org",
    tls_available=True,
    auth_mechanisms=("PLAIN", "LOGIN"),
    auth_allow_plaintext=True,
)


ACCEPT = Accept()


def accept_all(event: Event) -> Answer:
    return ACCEPT


def reject(*types: type[Event], answer: Answer | None = None) -> Policy:
    """Accept everything except events of `types`, which get `answer` (default `Reject()`)."""

    def policy(event: Event) -> Answer:
        if isinstance(event, types):
            return Reject() if answer is None else answer
        return Accept()

    return policy


def hold(*types: type[Event], policy: Policy = accept_all) -> Policy:
    """Answer with `policy`, but leave events of `types` pending (the engine stays PAUSED)."""

    def held(event: Event) -> Answer | None:
        return None if isinstance(event, types) else policy(event)

    return held


def joined(events: Iterable[Event]) -> list[Event]:
    """`events` with each run of MessageData merged into one, and the content of an aborted
    message dropped: how the pieces fall depends on how the input was split, not what they
    add up to."""
    out: list[Event] = []
    for event in events:
        if isinstance(event, MessageData) and out and isinstance(out[-1], MessageData):
            out[-1] = MessageData(data=out[-1].data + event.data)
            continue
        if isinstance(event, MessageAborted) and out and isinstance(out[-1], MessageData):
            out.pop()
        out.append(event)
    return out


def message(
    content: bytes,
    *,
    sender: str = "alice@example.org",
    recipients: tuple[str, ...] = ("bob@example.org",),
    params: MailParams | None = None,
    rcpt_params: tuple[RcptParams, ...] | None = None,
) -> list[Event]:
    """The events of a message with `content` (joined): its data, then EndOfMessage."""
    end = EndOfMessage(
        size=len(content),
        sender=sender,
        recipients=recipients,
        params=params if params is not None else MailParams(),
        rcpt_params=rcpt_params if rcpt_params is not None else (RcptParams(),) * len(recipients),
    )
    return [MessageData(data=content), end] if content else [end]


def aborted(reason: AbortReason) -> MessageAborted:
    return MessageAborted(reason=reason)


def content_of(events: Iterable[Event]) -> bytes:
    """The message content the MessageData events carry."""
    return b"".join(e.data for e in events if isinstance(e, MessageData))


def drain(conn: ServerConnection, policy: Policy = accept_all) -> tuple[list[Event], bytes]:
    """Pull events until NEED_DATA, PAUSED or Closed, answering decisions with `policy`;
    the events `joined()`."""
    events: list[Event] = []
    while True:
        event = conn.next_event()
        if event is NEED_DATA or event is PAUSED:
            break
        assert isinstance(event, Event)
        events.append(event)
        if isinstance(event, DECISION_EVENTS):
            answer = policy(event)
            if answer is None:
                break
            conn.send(answer)
        if isinstance(event, Closed):
            break
    return joined(events), conn.data_to_send()


def send_and_get(conn: ServerConnection, answer: Answer) -> bytes:
    """Answer the pending event, then drain the output buffer: the replies so far."""
    conn.send(answer)
    return conn.data_to_send()


def receive_and_get(
    conn: ServerConnection, data: bytes, policy: Policy = accept_all
) -> tuple[list[Event], bytes]:
    """Feed `data` in one piece, then drain."""
    conn.receive_data(data)
    return drain(conn, policy)


def receive_bytewise(
    conn: ServerConnection, data: bytes, policy: Policy = accept_all
) -> tuple[list[Event], bytes]:
    """Feed `data` one byte at a time, draining after each byte."""
    return receive_pieces(conn, [data[i : i + 1] for i in range(len(data))], policy)


def receive_pieces(
    conn: ServerConnection, pieces: Iterable[bytes], policy: Policy = accept_all
) -> tuple[list[Event], bytes]:
    """Feed each non-empty piece in turn (b"" would mean EOF), draining after each one."""
    events: list[Event] = []
    out = bytearray()
    for piece in filter(None, pieces):
        got, wire = receive_and_get(conn, piece, policy)
        events += got
        out += wire
        if any(isinstance(e, Closed) for e in got):
            break
    return joined(events), bytes(out)


#: How a test feeds its input: whole, or one byte at a time. Both must give the same result.
FEEDERS: dict[str, Callable[..., tuple[list[Event], bytes]]] = {
    "whole": receive_and_get,
    "bytewise": receive_bytewise,
}


def connect(
    config: Config = FULL,
    *,
    greet: Answer = ACCEPT,
    tls: bool = False,
) -> ServerConnection:
    """A connection whose Connected event was answered with `greet`; the greeting is drained."""
    conn = ServerConnection(config, peer=("192.0.2.7", 40312), tls=tls)
    event = conn.next_event()
    assert isinstance(event, Connected)
    conn.send(greet)
    conn.data_to_send()
    return conn


def session(
    config: Config = FULL, hello: bytes = b"EHLO client.example\r\n", *, tls: bool = False
) -> ServerConnection:
    """A greeted connection after an accepted `hello`, with its output drained."""
    conn = connect(config, tls=tls)
    events, _ = receive_and_get(conn, hello)
    assert events and not isinstance(events[-1], Closed)
    return conn


#: Commands that open a transaction with one accepted recipient.
ENVELOPE = b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.org>\r\n"

_REPLY_LINE = re.compile(rb"([2-5][0-9][0-9])(?:([ -])(.*))?\r\n")


def replies(wire: bytes) -> list[tuple[int, list[str]]]:
    """Split wire output into replies: (code, text lines). Fails on anything malformed."""
    result: list[tuple[int, list[str]]] = []
    lines: list[str] = []
    pos = 0
    while pos < len(wire):
        m = _REPLY_LINE.match(wire, pos)
        assert m is not None, f"malformed reply at {wire[pos:]!r}"
        text = m.group(3) or b""
        assert b"\r" not in text and b"\n" not in text
        lines.append(text.decode())
        if m.group(2) != b"-":
            result.append((int(m.group(1)), lines))
            lines = []
        pos = m.end()
    assert not lines, f"unterminated multi-line reply in {wire!r}"
    return result


def codes(wire: bytes) -> list[int]:
    """The reply codes in `wire`, one per reply."""
    return [code for code, _ in replies(wire)]
