"""smtp_core: a sans-IO SMTP server engine in the style of h11.

Bytes go in (`receive_data`), events come out (`next_event`), decisions go in (`send`), and
every reply comes out of one ordered buffer (`data_to_send`). It does no I/O and imports
nothing outside the stdlib.
"""

from ._config import Config
from ._connection import Answer, ServerConnection
from ._decisions import Accept, Close, Decision, Outcome, Reject, outcome_of
from ._errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from ._events import (
    CHUNK_SIZE,
    DECISION_EVENTS,
    NEED_DATA,
    PAUSED,
    AbortReason,
    AuthCredentials,
    Closed,
    CloseReason,
    Connected,
    EndOfMessage,
    Event,
    Hello,
    MailFrom,
    MailParams,
    MessageAborted,
    MessageData,
    Quit,
    RcptParams,
    RcptTo,
    Reset,
    Signal,
    StartTLS,
)
from ._proxy import ProxyCommand, ProxyError, ProxyHeader, parse_proxy_header
from ._reply import Reply, format_reply
from ._state import State

__all__ = [
    "CHUNK_SIZE",
    "DECISION_EVENTS",
    "NEED_DATA",
    "PAUSED",
    "AbortReason",
    "Accept",
    "Answer",
    "AuthCredentials",
    "Close",
    "CloseReason",
    "Closed",
    "Config",
    "Connected",
    "Decision",
    "EndOfMessage",
    "Event",
    "Hello",
    "LocalProtocolError",
    "MailFrom",
    "MailParams",
    "MessageAborted",
    "MessageData",
    "Outcome",
    "ProtocolError",
    "ProxyCommand",
    "ProxyError",
    "ProxyHeader",
    "Quit",
    "RcptParams",
    "RcptTo",
    "Reject",
    "RemoteProtocolError",
    "Reply",
    "Reset",
    "ServerConnection",
    "Signal",
    "StartTLS",
    "State",
    "format_reply",
    "outcome_of",
    "parse_proxy_header",
]
