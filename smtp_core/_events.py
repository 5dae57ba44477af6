"""Events: what the engine tells the application.

Events are frozen, slotted dataclasses built with keywords only. Don't subclass them. The ones
in `DECISION_EVENTS` pause the engine until `ServerConnection.send()` answers them; the others
need no answer, and answering them is a `LocalProtocolError`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Final, final

#: The most octets one `MessageData` event carries.
CHUNK_SIZE: Final = 64 * 1024

__all__ = [
    "CHUNK_SIZE",
    "DECISION_EVENTS",
    "NEED_DATA",
    "PAUSED",
    "AbortReason",
    "AuthCredentials",
    "CloseReason",
    "Closed",
    "Connected",
    "EndOfMessage",
    "Event",
    "Hello",
    "MailFrom",
    "MailParams",
    "MessageAborted",
    "MessageData",
    "Quit",
    "RcptParams",
    "RcptTo",
    "Reset",
    "Signal",
    "StartTLS",
]


class Signal(enum.Enum):
    """What `next_event()` returns when it has no event."""

    #: The engine needs more bytes from the peer before it can go on.
    NEED_DATA = "NEED_DATA"
    #: An event is waiting for the application's decision (or a TLS handshake is running).
    PAUSED = "PAUSED"


NEED_DATA: Final = Signal.NEED_DATA
PAUSED: Final = Signal.PAUSED


class CloseReason(enum.Enum):
    """Why the session ended: `Closed.reason`."""

    __hash__ = object.__hash__

    #: The client sent QUIT.
    QUIT = "quit"
    #: The client closed its side: `receive_data(b"")`.
    EOF = "eof"
    #: The application answered an event with `Close`, or with a 421.
    REFUSED = "refused"
    #: Too many client errors (`Config.max_errors`, 1 under stress).
    ERRORS = "errors"
    #: Too many failed logins (`Config.max_auth_failures`).
    AUTH = "auth"
    #: An HTTP-like command (`Config.forbidden_commands`).
    FORBIDDEN = "forbidden"
    #: The application called `abort()`.
    ABORTED = "aborted"
    #: No acceptable PROXY header (`Config.proxy_protocol`): missing, malformed or too long.
    PROXY = "bad proxy header"


class AbortReason(enum.Enum):
    """Why a message ended without `EndOfMessage`: `MessageAborted.reason`."""

    __hash__ = object.__hash__

    #: Past `Config.max_message_size` (552 follows, at the end of data or of the chunk).
    TOO_LARGE = "too large"
    #: A bare CR or LF in DATA text or a BDAT chunk (550 5.5.2 follows).
    BARE_LINE_ENDING = "bare CR or LF"
    #: A line longer than `Config.max_text_line` (500 5.5.6 follows).
    LINE_TOO_LONG = "line too long"
    #: The transaction was abandoned between BDAT chunks (RSET, HELO/EHLO).
    RESET = "reset"
    #: The session ended in the middle of the content: the peer closed, or `abort()`.
    CLOSED = "closed"


class Event:
    """Base class of all events."""

    __slots__ = ()


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class MailParams:
    """The ESMTP parameters of MAIL FROM, parsed and decoded (xtext undone)."""

    size: int | None = None
    body: str | None = None  #: "7BIT" or "8BITMIME"
    smtputf8: bool = False
    ret: str | None = None  #: DSN RET: "FULL" or "HDRS"
    envid: str | None = None  #: DSN ENVID
    auth: str | None = None  #: AUTH= mailbox, or "<>"


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class RcptParams:
    """The ESMTP parameters of RCPT TO, parsed and decoded."""

    #: DSN NOTIFY: ("NEVER",) or some of SUCCESS, FAILURE, DELAY.
    notify: tuple[str, ...] | None = None
    orcpt: tuple[str, str] | None = None  #: DSN ORCPT: (address type, original recipient)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Connected(Event):
    """A client connected; answer Accept to greet it (220), Reject (554) or Close (421)."""

    peer: tuple[str, int] | None


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Hello(Event):
    """HELO, EHLO or (in LMTP) LHLO. `extended` is true for EHLO and LHLO."""

    hostname: str
    extended: bool


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class AuthCredentials(Event):
    """A completed SASL exchange; Accept logs the client in as `username`."""

    mechanism: str
    username: str
    password: str = field(repr=False)
    authzid: str = ""


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class MailFrom(Event):
    """MAIL FROM. `sender` is "" for the null reverse-path <>."""

    sender: str
    params: MailParams


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class RcptTo(Event):
    """One RCPT TO."""

    recipient: str
    params: RcptParams


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class MessageData(Event):
    """A piece of message content, as it arrives: DATA text dot-unstuffed, or BDAT octets.
    At most `CHUNK_SIZE` octets. Needs no answer; `EndOfMessage` or `MessageAborted`
    follows the last piece."""

    data: bytes = field(repr=False)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class EndOfMessage(Event):
    """The content is complete (`size` octets, in the `MessageData` before it); decide on the
    message. In LMTP mode `send()` may answer it with a mapping of recipient to decision."""

    size: int
    sender: str
    recipients: tuple[str, ...]
    params: MailParams
    rcpt_params: tuple[RcptParams, ...]


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class MessageAborted(Event):
    """The content that began will not be a message: drop what `MessageData` gave. The
    engine answers the client itself (552, 550, ...) when the reason calls for a reply."""

    reason: AbortReason


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class StartTLS(Event):
    """STARTTLS. Accept sends 220 and pauses; call `tls_started()` after the handshake."""


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Reset(Event):
    """RSET: the transaction was abandoned. Informational, needs no answer."""


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Quit(Event):
    """QUIT: 221 is already queued. `Closed` follows."""


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Closed(Event):
    """The session is over. Send what `data_to_send()` holds, then close the socket."""

    reason: CloseReason


DECISION_EVENTS: Final[tuple[type[Event], ...]] = (
    Connected,
    Hello,
    AuthCredentials,
    MailFrom,
    RcptTo,
    EndOfMessage,
    StartTLS,
)
