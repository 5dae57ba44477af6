"""The session's states: every transition between them, and every fact about each, in tables.

Rules for this module: every change of `ServerConnection`'s state goes through
`next_state()`, and the tables here are the single source of truth, from which
`scripts/state_diagram.py` draws the diagram in docs/core.md. `TRANSITIONS` says where each
trigger leads; `FACTS` says, for each state, what the engine reads there, whether a mail
transaction is open, and which commands it refuses with which 503 text.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, final

from ._errors import LocalProtocolError

__all__ = [
    "CLOSED_STATE",
    "COMMAND_NAMES",
    "CONNECT_STATE",
    "FACTS",
    "HANDSHAKE_STATE",
    "NEED_RCPT",
    "ON_CLOSE",
    "ON_DATA",
    "ON_MAIL",
    "ON_MESSAGE_DONE",
    "ON_RCPT",
    "ON_RESET",
    "READS_PROXY",
    "READS_SASL",
    "READS_TEXT",
    "STARTTLS_STATE",
    "TRANSITIONS",
    "UNKNOWN",
    "Facts",
    "Input",
    "State",
    "Trigger",
    "next_state",
]


class State(enum.Enum):
    """Where the session is. What each state allows is in `FACTS`, where it leads in
    `TRANSITIONS`."""

    # Members are singletons: hash them by identity, not with Enum's Python-level __hash__,
    # since every command looks its state up in a table.
    __hash__ = object.__hash__

    #: Behind a proxy (`Config.proxy_protocol`): waiting for the PROXY header, before anything
    #: is said. A missing, malformed or oversized header closes the connection in silence.
    PROXY = "PROXY"
    #: Implicit TLS behind a proxy: the PROXY header is read, the TLS handshake follows;
    #: waiting for `tls_started()`. Feeding bytes now is a `LocalProtocolError`.
    HANDSHAKE = "HANDSHAKE"
    #: Connected (or restarted by XCLIENT); waiting for the application's answer to
    #: `Connected`.
    CONNECT = "CONNECT"
    #: The greeting was a 554: every command but QUIT gets 503 (RFC 5321 3.1).
    REFUSED = "REFUSED"
    #: 220 sent; no successful HELO/EHLO yet.
    GREETED = "GREETED"
    #: HELO/EHLO accepted; no transaction.
    READY = "READY"
    #: MAIL accepted; waiting for recipients.
    MAIL = "MAIL"
    #: At least one RCPT accepted.
    RCPT = "RCPT"
    #: After 354: reading message text up to CRLF.CRLF.
    DATA = "DATA"
    #: BDAT chunks received, more expected (RFC 3030).
    CHUNKING = "CHUNKING"
    #: A SASL exchange is running; lines are responses, not commands.
    AUTH = "AUTH"
    #: 220 sent to STARTTLS; waiting for `tls_started()`. Feeding bytes now is a
    #: `LocalProtocolError`: what the client sends next belongs to the TLS handshake.
    STARTTLS = "STARTTLS"
    #: The session is over; bytes received are ignored.
    CLOSED = "CLOSED"


class Trigger(enum.Enum):
    __hash__ = object.__hash__

    PROXY_READ = "PROXY header read"
    PROXY_TLS = "PROXY header read (SMTPS)"
    GREET = "greet"  #: the application accepted the connection
    #: accepted after an XCLIENT that gave the HELO name: no new HELO/EHLO is needed
    GREET_HELLO = "greet (XCLIENT HELO)"
    REFUSE = "refuse"  #: the application rejected it (554, wait for QUIT)
    HELLO = "HELO/EHLO accepted"
    HELLO_REJECTED = "HELO/EHLO rejected"
    AUTH = "AUTH"
    AUTH_DONE = "AUTH done"
    MAIL = "MAIL accepted"
    RCPT = "RCPT accepted"
    DATA = "DATA (354)"
    CHUNK = "BDAT chunk"
    MESSAGE_DONE = "message answered"
    RESET = "RSET / abandoned"
    STARTTLS = "STARTTLS accepted"
    TLS_DONE = "tls_started()"
    XCLIENT = "XCLIENT"
    CLOSE = "close"


_S = State
_T = Trigger
#: What ends or restarts a transaction, whatever its stage.
_ENDS_TRANSACTION: Final = {
    _T.HELLO: _S.READY,
    _T.HELLO_REJECTED: _S.GREETED,
    _T.RESET: _S.READY,
}

#: {state: {trigger: new state}}. CLOSE leads from every state to CLOSED.
TRANSITIONS: Final[dict[State, dict[Trigger, State]]] = {
    _S.PROXY: {_T.PROXY_READ: _S.CONNECT, _T.PROXY_TLS: _S.HANDSHAKE},
    _S.HANDSHAKE: {_T.TLS_DONE: _S.CONNECT},
    _S.CONNECT: {_T.GREET: _S.GREETED, _T.GREET_HELLO: _S.READY, _T.REFUSE: _S.REFUSED},
    _S.REFUSED: {},
    _S.GREETED: {
        _T.HELLO: _S.READY,
        _T.HELLO_REJECTED: _S.GREETED,
        _T.RESET: _S.GREETED,
        _T.STARTTLS: _S.STARTTLS,
        _T.XCLIENT: _S.CONNECT,
    },
    _S.READY: {
        **_ENDS_TRANSACTION,
        _T.MAIL: _S.MAIL,
        _T.AUTH: _S.AUTH,
        _T.STARTTLS: _S.STARTTLS,
        _T.XCLIENT: _S.CONNECT,
    },
    _S.MAIL: {**_ENDS_TRANSACTION, _T.RCPT: _S.RCPT},
    _S.RCPT: {
        **_ENDS_TRANSACTION,
        _T.RCPT: _S.RCPT,
        _T.DATA: _S.DATA,
        _T.CHUNK: _S.CHUNKING,
        _T.MESSAGE_DONE: _S.READY,
    },
    _S.DATA: {_T.MESSAGE_DONE: _S.READY},
    _S.CHUNKING: {**_ENDS_TRANSACTION, _T.CHUNK: _S.CHUNKING, _T.MESSAGE_DONE: _S.READY},
    _S.AUTH: {_T.AUTH_DONE: _S.READY},
    _S.STARTTLS: {_T.TLS_DONE: _S.GREETED},
    _S.CLOSED: {},
}

#: Every command the engine knows, in the order HELP lists them.
COMMAND_NAMES: Final = (
    "HELO",
    "EHLO",
    "LHLO",
    "MAIL",
    "RCPT",
    "DATA",
    "BDAT",
    "RSET",
    "NOOP",
    "HELP",
    "VRFY",
    "EXPN",
    "QUIT",
    "STARTTLS",
    "AUTH",
    "XCLIENT",
)
#: The key of `Facts.refused` that stands for any verb the engine does not know.
UNKNOWN: Final = "unknown"


class Input(enum.Enum):
    """What the engine reads from the peer in a state."""

    __hash__ = object.__hash__

    NOTHING = "nothing"
    PROXY = "the PROXY protocol header (v1 or v2)"
    COMMANDS = "command lines"
    TEXT = "message text, up to `CRLF.CRLF`"
    SASL = "SASL responses, one base64 line each (`*` cancels)"


@final
@dataclass(frozen=True, slots=True)
class Facts:
    """Everything the engine knows about one state besides its transitions."""

    #: What the engine reads from the peer here.
    reads: Input
    #: A mail transaction is open: MAIL was accepted and its message not yet answered.
    in_transaction: bool = False
    #: Commands that fail the state check here, each with the text of its 503; the others
    #: pass it (and may still be refused by their own rules). `UNKNOWN` stands for any verb
    #: the engine does not know, which otherwise gets 500.
    refused: Mapping[str, str] = field(default_factory=dict)


_NEED_HELO: Final = "Error: send HELO/EHLO first"
_NEED_MAIL: Final = "Error: need MAIL command"
#: The one 503 text that RFC 2920 3.1 turns into 554 "no valid recipients" when every RCPT of
#: the transaction was refused.
NEED_RCPT: Final = "Error: need RCPT command"
_NESTED: Final = "Error: nested MAIL command"
_IN_TRANSACTION: Final = "Error: MAIL transaction in progress"
_IN_BDAT: Final = "Error: BDAT in progress"
_DENIED: Final = "Error: access denied, send QUIT"
#: What a transaction refuses whatever its stage.
_IN_MAIL: Final = {
    "MAIL": _NESTED,
    "STARTTLS": _IN_TRANSACTION,
    "AUTH": _IN_TRANSACTION,
    "XCLIENT": _IN_TRANSACTION,
}

FACTS: Final[dict[State, Facts]] = {
    _S.PROXY: Facts(Input.PROXY),
    _S.HANDSHAKE: Facts(Input.NOTHING),
    _S.CONNECT: Facts(Input.NOTHING),
    # RFC 5321 3.1: after a 554 greeting, every command but QUIT gets 503.
    _S.REFUSED: Facts(
        Input.COMMANDS,
        refused={name: _DENIED for name in (*COMMAND_NAMES, UNKNOWN) if name != "QUIT"},
    ),
    _S.GREETED: Facts(
        Input.COMMANDS,
        refused={"MAIL": _NEED_HELO, "RCPT": _NEED_MAIL, "DATA": _NEED_MAIL, "BDAT": NEED_RCPT},
    ),
    _S.READY: Facts(
        Input.COMMANDS, refused={"RCPT": _NEED_MAIL, "DATA": _NEED_MAIL, "BDAT": NEED_RCPT}
    ),
    _S.MAIL: Facts(
        Input.COMMANDS,
        in_transaction=True,
        refused={**_IN_MAIL, "DATA": NEED_RCPT, "BDAT": NEED_RCPT},
    ),
    _S.RCPT: Facts(Input.COMMANDS, in_transaction=True, refused=_IN_MAIL),
    _S.DATA: Facts(Input.TEXT, in_transaction=True),
    _S.CHUNKING: Facts(
        Input.COMMANDS,
        in_transaction=True,
        refused={**_IN_MAIL, "RCPT": _IN_BDAT, "DATA": _IN_BDAT},
    ),
    _S.AUTH: Facts(Input.SASL),
    _S.STARTTLS: Facts(Input.NOTHING),
    _S.CLOSED: Facts(Input.NOTHING),
}


# Members the per-command paths compare against, bound to module names once: on Python 3.11
# reading `State.CLOSED` goes through EnumType's __getattr__ hook, about 0.1 µs each time.
CLOSED_STATE: Final = State.CLOSED
STARTTLS_STATE: Final = State.STARTTLS
HANDSHAKE_STATE: Final = State.HANDSHAKE
CONNECT_STATE: Final = State.CONNECT
READS_TEXT: Final = Input.TEXT
READS_PROXY: Final = Input.PROXY
READS_SASL: Final = Input.SASL
ON_MAIL: Final = Trigger.MAIL
ON_RCPT: Final = Trigger.RCPT
ON_DATA: Final = Trigger.DATA
ON_MESSAGE_DONE: Final = Trigger.MESSAGE_DONE
ON_CLOSE: Final = Trigger.CLOSE
ON_RESET: Final = Trigger.RESET


def next_state(state: State, trigger: Trigger) -> State:
    """The state after `trigger`; a missing table entry is a bug in the engine or its caller."""
    if trigger is ON_CLOSE:
        return CLOSED_STATE
    try:
        return TRANSITIONS[state][trigger]
    except KeyError:
        raise LocalProtocolError(f"cannot {trigger.value!r} in state {state.name}") from None
