"""The session's states and every transition between them, in one table.

Rules for this module: every change of `ServerConnection`'s state goes through
`next_state()`, and the table is the single source of truth, from which
`scripts/state_diagram.py` draws the diagram in docs/core.md. Which commands each state
accepts is the second table here, `COMMANDS`.
"""

from __future__ import annotations

import enum
from typing import Final

from ._errors import LocalProtocolError

__all__ = ["COMMANDS", "TRANSITIONS", "State", "Trigger", "next_state"]


class State(enum.Enum):
    # Members are singletons: hash them by identity, not with Enum's Python-level __hash__,
    # since every command looks its state up in a table.
    __hash__ = object.__hash__

    #: Connected; waiting for the application's verdict on the client.
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
    #: 220 sent to STARTTLS; waiting for `tls_started()`.
    STARTTLS = "STARTTLS"
    #: The session is over.
    CLOSED = "CLOSED"


class Trigger(enum.Enum):
    __hash__ = object.__hash__

    GREET = "greet"  #: the application accepted the connection
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
    CLOSE = "close"


_S = State
_T = Trigger
_TRANSACTION: Final = {_T.HELLO: _S.READY, _T.HELLO_REJECTED: _S.GREETED, _T.RESET: _S.READY}

#: {state: {trigger: new state}}. CLOSE leads from every state to CLOSED.
TRANSITIONS: Final[dict[State, dict[Trigger, State]]] = {
    _S.CONNECT: {_T.GREET: _S.GREETED, _T.REFUSE: _S.REFUSED},
    _S.REFUSED: {},
    _S.GREETED: {
        _T.HELLO: _S.READY,
        _T.HELLO_REJECTED: _S.GREETED,
        _T.RESET: _S.GREETED,
        _T.STARTTLS: _S.STARTTLS,
    },
    _S.READY: {**_TRANSACTION, _T.MAIL: _S.MAIL, _T.AUTH: _S.AUTH, _T.STARTTLS: _S.STARTTLS},
    _S.MAIL: {**_TRANSACTION, _T.RCPT: _S.RCPT},
    _S.RCPT: {
        **_TRANSACTION,
        _T.RCPT: _S.RCPT,
        _T.DATA: _S.DATA,
        _T.CHUNK: _S.CHUNKING,
        _T.MESSAGE_DONE: _S.READY,
    },
    _S.DATA: {_T.MESSAGE_DONE: _S.READY},
    _S.CHUNKING: {**_TRANSACTION, _T.CHUNK: _S.CHUNKING, _T.MESSAGE_DONE: _S.READY},
    _S.AUTH: {_T.AUTH_DONE: _S.READY},
    _S.STARTTLS: {_T.TLS_DONE: _S.GREETED},
    _S.CLOSED: {},
}

_SESSION: Final = frozenset({_S.GREETED, _S.READY, _S.MAIL, _S.RCPT, _S.CHUNKING})
_HELLOED: Final = frozenset({_S.READY, _S.MAIL, _S.RCPT, _S.CHUNKING})

#: {command: (states where it is allowed, the 503 text elsewhere)}. QUIT is allowed
#: everywhere; commands missing here get 500.
COMMANDS: Final[dict[str, tuple[frozenset[State], str]]] = {
    "HELO": (_SESSION, ""),
    "EHLO": (_SESSION, ""),
    "LHLO": (_SESSION, ""),
    # MAIL and DATA pick their own 503 text (nested MAIL, no valid recipients, ...).
    "MAIL": (_SESSION, ""),
    "RCPT": (frozenset({_S.MAIL, _S.RCPT}), "Error: need MAIL command"),
    "DATA": (frozenset({_S.MAIL, _S.RCPT, _S.CHUNKING}), "Error: need MAIL command"),
    # BDAT is checked by the command itself: a refused chunk must still be read.
    "BDAT": (_SESSION | {_S.REFUSED}, ""),
    "RSET": (_SESSION, ""),
    "NOOP": (_SESSION, ""),
    "HELP": (_SESSION, ""),
    "VRFY": (_SESSION, ""),
    "EXPN": (_SESSION, ""),
    "STARTTLS": (frozenset({_S.GREETED, _S.READY}), "Error: MAIL transaction in progress"),
    "AUTH": (_SESSION, ""),
    "QUIT": (_SESSION | {_S.REFUSED}, ""),
}


def next_state(state: State, trigger: Trigger) -> State:
    """The state after `trigger`; a missing table entry is a bug in the engine or its caller."""
    if trigger is Trigger.CLOSE:
        return State.CLOSED
    try:
        return TRANSITIONS[state][trigger]
    except KeyError:
        raise LocalProtocolError(f"cannot {trigger.value!r} in state {state.name}") from None
