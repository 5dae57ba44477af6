"""handlers: the application side of smtpkit.

Write a `Handler` subclass with the hooks you need (welcome, ehlo, auth, mail, rcpt, data);
each returns Accept, Reject or Close. Ready-made handlers: SinkHandler, PrintHandler,
MaildirHandler.
"""

from smtp_core import Accept, Close, Decision, MailParams, RcptParams, Reject, Reply

from ._handler import Handler, HandlerFactory, HookResult
from ._maildir import Maildir, MaildirHandler
from ._ready import PrintHandler, SinkHandler
from ._session import Envelope, Session

__all__ = [
    "Accept",
    "Close",
    "Decision",
    "Envelope",
    "Handler",
    "HandlerFactory",
    "HookResult",
    "MailParams",
    "Maildir",
    "MaildirHandler",
    "PrintHandler",
    "RcptParams",
    "Reject",
    "Reply",
    "Session",
    "SinkHandler",
]
