"""The Handler interface: the seed framework's SP_SmtpHandler, made Pythonic.

One handler object serves one connection. Each hook returns a decision. A hook may be a plain
`def` (it runs on the worker pool, so it may block) or an `async def` (it runs on the event
loop). A hook the subclass does not override is answered inline, at no cost.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, ClassVar

from smtp_core import Accept, Decision, MailParams, RcptParams, Reject, Reply

if TYPE_CHECKING:
    from ._session import Envelope, Session

__all__ = ["HOOKS", "Handler", "HandlerFactory", "HookResult"]

#: What a hook may return: a decision, a full Reply, or (LMTP `data`) one per recipient.
HookResult = Decision | Reply | Mapping[str, Decision | Reply]

#: The hooks that answer an SMTP command, in session order.
HOOKS = ("welcome", "ehlo", "auth", "mail", "rcpt", "data")


class Handler:
    """Subclass this and override the hooks you need.

    Defaults accept everything except `auth`, which rejects; AUTH is offered only when a
    subclass overrides `auth`. `self.session` and `self.envelope` are there from `welcome` on:
    the transport calls `bind()` with them when it makes the handler's session.
    """

    #: False promises that no plain hook ever blocks, so they run inline on the event loop
    #: instead of on the worker pool (the ready `sink` and `print` handlers do this).
    blocking: ClassVar[bool] = True

    session: Session
    envelope: Envelope

    def bind(self, session: Session, envelope: Envelope) -> None:
        """Called once, before any hook, with the connection's read-only views: the session
        (peer, HELO name, TLS, user) and the current transaction. Override it to set up
        per-connection state; call `super().bind()` to keep `self.session` and
        `self.envelope`."""
        self.session = session
        self.envelope = envelope

    def welcome(self, client_ip: str) -> HookResult | Awaitable[HookResult]:
        """A client connected. Close drops it (421), Reject refuses it politely (554)."""
        return Accept()

    def ehlo(self, hostname: str) -> HookResult | Awaitable[HookResult]:
        """HELO, EHLO or LHLO."""
        return Accept()

    def auth(self, user: str, password: str) -> HookResult | Awaitable[HookResult]:
        """Check credentials from AUTH PLAIN or LOGIN. Accept logs the client in."""
        return Reject()

    def mail(self, sender: str, params: MailParams) -> HookResult | Awaitable[HookResult]:
        """MAIL FROM; `sender` is "" for the null sender <>."""
        return Accept()

    def rcpt(self, recipient: str, params: RcptParams) -> HookResult | Awaitable[HookResult]:
        """One RCPT TO; called once per recipient."""
        return Accept()

    def data(self, message: bytes) -> HookResult | Awaitable[HookResult]:
        """The whole message, with the Received header prepended. Nothing may be lost once
        this returns Accept: deliver or queue durably before returning."""
        return Accept()

    def reset(self) -> Awaitable[None] | None:
        """The client abandoned the transaction (RSET)."""
        return None

    def close(self) -> Awaitable[None] | None:
        """The connection ended, however it ended. Release what the handler holds."""
        return None


#: Makes one handler per connection. A Handler subclass is its own factory.
HandlerFactory = Callable[[], Handler]
