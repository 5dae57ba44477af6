"""handlers: the application side of smtpkit.

Write a `Handler` subclass with the hooks you need (welcome, ehlo, auth, mail, rcpt, data);
each returns Accept, Reject or Close. Ready-made handlers: SinkHandler, PrintHandler,
MaildirHandler (one Maildir, or one per recipient), RelayHandler (to a smarthost). Checks go in
front of a deliverer as an ordered `Pipeline` of policies (`smtpkit.handlers.policies`):

    Pipeline(CidrBlocklist.load("blocked"), RelayControl(networks=["10.0.0.0/8"]),
             deliver=Relay("mx.internal.example.org", 25))
"""

from smtp_core import Accept, Close, Decision, MailParams, RcptParams, Reject, Reply

from ._deliver import LmtpRelayHandler, MaildirDelivery, Relay
from ._handler import HOOKS, PLANNED_HOOKS, Handler, HandlerFactory, HookResult, Mode, modes_of
from ._maildir import Maildir, MaildirHandler, mailbox_name
from ._message import EditKind, HeaderEdit, Message
from ._pipeline import Context, Pipeline, Policy, PolicyResult, handler_class_of
from ._ready import PrintHandler, SinkHandler
from ._relay import RelayHandler
from ._session import Envelope, Session
from ._trace import log_escape
from .policies import SCHEMES, PasswordFile, hash_password, verify_password

__all__ = [
    "HOOKS",
    "PLANNED_HOOKS",
    "SCHEMES",
    "Accept",
    "Close",
    "Context",
    "Decision",
    "EditKind",
    "Envelope",
    "Handler",
    "HandlerFactory",
    "HeaderEdit",
    "HookResult",
    "LmtpRelayHandler",
    "MailParams",
    "Maildir",
    "MaildirDelivery",
    "MaildirHandler",
    "Message",
    "Mode",
    "PasswordFile",
    "Pipeline",
    "Policy",
    "PolicyResult",
    "PrintHandler",
    "RcptParams",
    "Reject",
    "Relay",
    "RelayHandler",
    "Reply",
    "Session",
    "SinkHandler",
    "handler_class_of",
    "hash_password",
    "log_escape",
    "mailbox_name",
    "modes_of",
    "verify_password",
]
