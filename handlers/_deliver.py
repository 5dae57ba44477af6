"""Deliverers for a Pipeline's `deliver=`: `Relay` (SMTP or LMTP to a smarthost) and
`MaildirDelivery`, factories built once that make one handler per connection. Any Handler
subclass is a deliverer too (SinkHandler, PrintHandler, yours).

LMTP after DATA answers once per recipient (RFC 2033), but an SMTP client can only be given
one answer for the message. So that no mail is ever lost or duplicated when the LMTP server
takes some recipients and refuses others, the LMTP relay takes one recipient per transaction:
the next ones get `452 4.5.3`, which tells the client to send them again in a new transaction
(RFC 5321 section 4.5.3.1.10), and the verdict on the message is then that recipient's.
"""

from __future__ import annotations

import os
import smtplib
from dataclasses import dataclass
from typing import Any, ClassVar, final

from smtp_core import RcptParams, Reject

from ._handler import Handler, HookResult
from ._maildir import MaildirHandler
from ._relay import RelayHandler

__all__ = ["LmtpRelayHandler", "MaildirDelivery", "Relay"]


class LmtpRelayHandler(RelayHandler):
    """RelayHandler speaking LMTP to the smarthost (a Dovecot or Cyrus LMTP server): LHLO,
    and one recipient per transaction (see the module docstring). A `host` starting with "/"
    is the LMTP server's Unix socket."""

    client_class: ClassVar[type[smtplib.SMTP]] = smtplib.LMTP

    def rcpt(self, recipient: str, params: RcptParams) -> HookResult:
        if self.envelope.recipients:
            return Reject(452, "4.5.3 Error: one recipient per message here: send it again")
        return super().rcpt(recipient, params)


@final
class Relay:
    """Relay each message to a smarthost, before-queue: one upstream connection per client
    connection, and the smarthost's verdicts as ours (see RelayHandler).

    >>> Pipeline(RelayControl(networks=["10.0.0.0/8"]), deliver=Relay("mx.internal", 25))

    `lmtp=True` speaks LMTP (to Dovecot's `lmtp` service, say); `options` are RelayHandler's
    (starttls, username, password, timeout, local_hostname...), checked now.
    """

    __slots__ = ("handler_class", "host", "options", "port")

    def __init__(self, host: str, port: int = 25, *, lmtp: bool = False, **options: Any) -> None:
        self.host = host
        self.port = port
        self.options = options
        self.handler_class: type[RelayHandler] = LmtpRelayHandler if lmtp else RelayHandler
        self()  # a mistake in the options fails here, not at the first connection

    def __call__(self) -> RelayHandler:
        return self.handler_class(self.host, self.port, **self.options)

    def __repr__(self) -> str:
        return f"Relay({self.host!r}, {self.port}, lmtp={self.handler_class is LmtpRelayHandler})"


@final
@dataclass(frozen=True)
class MaildirDelivery:
    """Store each message in a Maildir, or with `per_recipient` in one Maildir per recipient
    under `path` (see MaildirHandler).

    >>> mailboxes = MaildirDelivery("/srv/mail", per_recipient=True)
    >>> Pipeline(RecipientTable.load("users"), deliver=mailboxes)
    """

    path: str | os.PathLike[str] = "maildir"
    per_recipient: bool = False
    handler_class: ClassVar[type[Handler]] = MaildirHandler

    def __call__(self) -> MaildirHandler:
        return MaildirHandler(self.path, per_recipient=self.per_recipient)
