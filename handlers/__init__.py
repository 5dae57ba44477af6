"""handlers: the application side of smtpkit.

Write a `Handler` subclass with the hooks you need (welcome, ehlo, auth, mail, rcpt, data);
each returns Accept, Reject or Close. Ready-made handlers: SinkHandler, PrintHandler,
MaildirHandler (one Maildir, or one per recipient), RelayHandler (to a smarthost). Policies
(CidrBlocklist, Dnsbl, RelayControl, PasswordAuth) go in front of a handler by inheritance:
`class Gateway(CidrBlocklist, RelayControl, RelayHandler)`. `with_password_file()` gives
any handler an `auth` hook backed by a `PasswordFile`.
"""

from smtp_core import Accept, Close, Decision, MailParams, RcptParams, Reject, Reply

from ._authfile import SCHEMES, PasswordFile, hash_password, verify_password, with_password_file
from ._handler import HOOKS, Handler, HandlerFactory, HookResult
from ._maildir import Maildir, MaildirHandler, mailbox_name
from ._message import EditKind, HeaderEdit, Message
from ._policies import CidrBlocklist, Dnsbl, Networks, PasswordAuth, Policy, RelayControl
from ._ready import PrintHandler, SinkHandler
from ._relay import RelayHandler
from ._session import Envelope, Session
from ._trace import log_escape

__all__ = [
    "HOOKS",
    "SCHEMES",
    "Accept",
    "CidrBlocklist",
    "Close",
    "Decision",
    "Dnsbl",
    "EditKind",
    "Envelope",
    "Handler",
    "HandlerFactory",
    "HeaderEdit",
    "HookResult",
    "MailParams",
    "Maildir",
    "MaildirHandler",
    "Message",
    "Networks",
    "PasswordAuth",
    "PasswordFile",
    "Policy",
    "PrintHandler",
    "RcptParams",
    "Reject",
    "RelayControl",
    "RelayHandler",
    "Reply",
    "Session",
    "SinkHandler",
    "hash_password",
    "log_escape",
    "mailbox_name",
    "verify_password",
    "with_password_file",
]
