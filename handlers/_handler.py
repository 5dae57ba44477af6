"""The Handler interface: the seed framework's SP_SmtpHandler, made Pythonic.

One handler object serves one connection. Each hook returns a decision. A hook may be a plain
`def` (it runs on the worker pool, so it may block) or an `async def` (it runs on the event
loop). A hook the subclass does not override is answered inline, at no cost.
"""

from __future__ import annotations

import enum
import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, ClassVar

from smtp_core import Accept, Decision, MailParams, RcptParams, Reject, Reply

if TYPE_CHECKING:
    from ._message import Message
    from ._session import Envelope, Session

__all__ = ["HOOKS", "PLANNED_HOOKS", "Handler", "HandlerFactory", "HookResult", "Mode", "modes_of"]

#: What a hook may return: a decision, a full Reply, or (LMTP `data`) one per recipient.
HookResult = Decision | Reply | Mapping[str, Decision | Reply]

#: The hooks that answer an SMTP command, in session order.
HOOKS = ("welcome", "ehlo", "auth", "mail", "rcpt", "data")
#: Every hook whose place to run is planned: those of HOOKS, then the notifications.
PLANNED_HOOKS = (*HOOKS, "reset", "close")


class Mode(enum.Enum):
    """Where a hook runs."""

    #: Not overridden: answered inline with the default decision.
    DEFAULT = "default"
    #: A plain hook of a non-blocking handler: called inline on the I/O thread.
    INLINE = "inline"
    #: A plain hook: called on the worker pool, because it may block.
    THREAD = "thread"
    #: An async hook: awaited on the event loop.
    ASYNC = "async"


class Handler:
    """Subclass this and override the hooks you need.

    Defaults accept everything except `auth`, which rejects; AUTH is offered only when a
    subclass overrides `auth`. `self.session` and `self.envelope` are there from `welcome` on:
    the transport calls `bind()` with them when it makes the handler's session.
    """

    #: False promises that no plain hook ever blocks, so they run inline on the event loop
    #: instead of on the worker pool (the ready `sink` and `print` handlers do this).
    blocking: ClassVar[bool] = True
    #: True for a handler that sends mail on to other hosts (a relay, a queue): a Pipeline
    #: delivering with it refuses to start without relay control.
    delivers_onward: ClassVar[bool] = False

    session: Session
    envelope: Envelope

    def bind(self, session: Session, envelope: Envelope) -> None:
        """Called once, before any hook, with the connection's read-only views: the session
        (peer, HELO name, TLS, user) and the current transaction. Override it to set up
        per-connection state; call `super().bind()` to keep `self.session` and
        `self.envelope`."""
        self.session = session
        self.envelope = envelope

    def hook_modes(self) -> Mapping[str, Mode]:
        """Where each hook of this handler runs: read from its class (`modes_of`). A
        Pipeline's handlers answer with the plan their pipeline worked out when built."""
        return modes_of(type(self))

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

    def data(self, message: Message) -> HookResult | Awaitable[HookResult]:
        """The message (its `Received:` header first): `bytes(message)` for small ones,
        `message.open()` or `message.chunks()` for any size. Nothing may be lost once this
        returns Accept: deliver or queue durably before returning."""
        return Accept()

    def reset(self) -> Awaitable[None] | None:
        """The client abandoned the transaction (RSET)."""
        return None

    def close(self) -> Awaitable[None] | None:
        """The connection ended, however it ended. Release what the handler holds."""
        return None


#: Makes one handler per connection. A Handler subclass is its own factory.
HandlerFactory = Callable[[], Handler]


_MODES: dict[type[Handler], Mapping[str, Mode]] = {}


def modes_of(cls: type[Handler]) -> Mapping[str, Mode]:
    """Where each hook of a handler class runs: DEFAULT when not overridden, ASYNC for an
    `async def`, else THREAD, or INLINE when the class promises not to block. Worked out once
    per class."""
    modes = _MODES.get(cls)
    if modes is None:
        modes = _MODES[cls] = {name: _mode(cls, name) for name in PLANNED_HOOKS}
    return modes


def _mode(cls: type[Handler], name: str) -> Mode:
    fn = getattr(cls, name)
    if fn is getattr(Handler, name):
        return Mode.DEFAULT
    if inspect.iscoroutinefunction(fn):
        return Mode.ASYNC
    return Mode.THREAD if cls.blocking else Mode.INLINE
