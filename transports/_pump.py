"""The pump: events to hook calls, decisions to replies. Transport-neutral and I/O-free.

Every transport runs the same loop around it:

    pump.receive_data(data)
    while True:
        action = pump.next_action()
        write(pump.data_to_send())          # always flush before waiting on anything
        if action is NEED_DATA: read more (until pump.read_deadline()); continue
        if isinstance(action, HookCall): run it (THREAD: worker pool, ASYNC: await on the
            loop), then pump.hook_done(result) or pump.hook_failed(exc); continue
        if action is START_TLS: handshake, then pump.tls_started(version); continue
        if action is CLOSE: close the socket; stop

Hooks the handler does not override, and plain hooks of a non-blocking handler, are run here
inline, so they never cost a trip to the pool.
"""

from __future__ import annotations

import email.utils
import enum
import inspect
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, final

from smtp_core import (
    AuthCredentials,
    Closed,
    Connected,
    Event,
    Hello,
    LocalProtocolError,
    MailFrom,
    Message,
    Quit,
    RcptTo,
    Reply,
    Reset,
    ServerConnection,
    Signal,
    StartTLS,
    State,
)
from smtpkit.handlers import Accept, Close, Envelope, Handler, Reject, Session
from smtpkit.handlers._handler import HOOKS

__all__ = [
    "CLOSE",
    "NEED_DATA",
    "START_TLS",
    "Action",
    "HookCall",
    "HookPlan",
    "Mode",
    "Pump",
    "Wait",
    "new_queue_id",
    "plan_for",
]

log = logging.getLogger("smtpkit")


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


class Wait(enum.Enum):
    #: Flush, then read more bytes.
    NEED_DATA = "NEED_DATA"
    #: Flush (the 220), run the TLS handshake, then call `tls_started()`, or close on failure.
    START_TLS = "START_TLS"
    #: Flush, then close the connection. The session is over.
    CLOSE = "CLOSE"


NEED_DATA: Final = Wait.NEED_DATA
START_TLS: Final = Wait.START_TLS
CLOSE: Final = Wait.CLOSE


@final
@dataclass(frozen=True, slots=True)
class HookCall:
    """Run `fn(*args)` where `mode` says, then report with `hook_done()` or `hook_failed()`."""

    name: str
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    mode: Mode


Action = HookCall | Wait


@final
@dataclass(frozen=True, slots=True)
class HookPlan:
    """Where each hook of one handler class runs, worked out once per class."""

    modes: Mapping[str, Mode]
    #: Events the engine may accept by itself: their hooks are not overridden.
    auto_accept: frozenset[type[Event]]

    @property
    def async_hooks(self) -> tuple[str, ...]:
        return tuple(name for name, mode in self.modes.items() if mode is Mode.ASYNC)

    @property
    def offers_auth(self) -> bool:
        return self.modes["auth"] is not Mode.DEFAULT


_PLANS: dict[type[Handler], HookPlan] = {}


def plan_for(cls: type[Handler]) -> HookPlan:
    """The HookPlan of a handler class, computed on first use."""
    plan = _PLANS.get(cls)
    if plan is None:
        plan = _PLANS[cls] = _make_plan(cls)
    return plan


def _make_plan(cls: type[Handler]) -> HookPlan:
    modes = {}
    for name in (*HOOKS, "reset", "close"):
        fn = getattr(cls, name)
        if fn is getattr(Handler, name):
            modes[name] = Mode.DEFAULT
        elif inspect.iscoroutinefunction(fn):
            modes[name] = Mode.ASYNC
        else:
            modes[name] = Mode.THREAD if cls.blocking else Mode.INLINE
    auto = frozenset(
        event for event, name in _AUTO_ACCEPTABLE.items() if modes[name] is Mode.DEFAULT
    )
    return HookPlan(modes, auto)


def new_queue_id() -> str:
    """A Postfix-looking queue ID: 12 hex digits. Random, so forked processes don't collide."""
    return f"{random.getrandbits(48):012X}"


_INTERNAL_ERROR: Final = Reply(code=451, text=("Error: internal server error",), enhanced="4.3.0")
_WELCOME_ERROR: Final = Reply(code=421, text=("Error: internal server error",), enhanced="4.3.0")
_HOOK_OF: Final[dict[type[Event], str]] = {
    Connected: "welcome",
    Hello: "ehlo",
    AuthCredentials: "auth",
    MailFrom: "mail",
    RcptTo: "rcpt",
    Message: "data",
    Reset: "reset",
    Closed: "close",
}
_DEFAULTS: Final[dict[str, Any]] = {"auth": Reject()}
# The welcome hook stays with the pump (it logs the connection), and data too (queue IDs).
_AUTO_ACCEPTABLE: Final[dict[type[Event], str]] = {Hello: "ehlo", MailFrom: "mail", RcptTo: "rcpt"}
_NOTIFY: Final = frozenset({"reset", "close"})


@final
class Pump:
    """Drives one ServerConnection for one handler."""

    def __init__(
        self,
        conn: ServerConnection,
        handler: Handler,
        *,
        timeout: float = 300.0,
        data_timeout: float = 600.0,
        received_header: bool = True,
        tls_version: str | None = None,
        queue_id: Callable[[], str] = new_queue_id,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.conn = conn
        self.handler = handler
        self.plan = plan_for(type(handler))
        self.session = Session(conn, tls_version)
        self.envelope = Envelope(conn)
        handler.session = self.session
        handler.envelope = self.envelope
        self.timeout = timeout
        self.data_timeout = data_timeout
        self.received_header = received_header
        self._queue_id = queue_id
        self._clock = clock
        self._started = clock()
        self._message_started: float | None = None
        self._call: HookCall | None = None
        self._event: Event | None = None
        self._over = False
        self._out = bytearray()  # replies drained by conn.send(), not yet handed out
        self.messages = 0
        self.close_reason = ""

    # ------------------------------------------------------------------ the loop

    def receive_data(self, data: bytes | bytearray) -> None:
        self.conn.receive_data(data)

    def data_to_send(self) -> bytes:
        """Every reply so far, in command order (what `send()` returned, then the rest)."""
        if self._out:
            self._out += self.conn.data_to_send()
            out = bytes(self._out)
            self._out.clear()
            return out
        return self.conn.data_to_send()

    def next_action(self) -> Action:
        """What the transport must do next. Never call it while a HookCall is outstanding."""
        if self._call is not None:
            raise LocalProtocolError(f"hook {self._call.name} is still running")
        while not self._over:
            event = self.conn.next_event()
            if event is Signal.NEED_DATA:
                self._track_message_start()
                return NEED_DATA
            if event is Signal.PAUSED:
                if self.conn.state is State.STARTTLS:
                    return START_TLS
                raise LocalProtocolError("engine paused with no hook running")
            action = self._dispatch(event)
            if action is not None:
                return action
        return CLOSE

    def hook_done(self, result: Any, call: HookCall | None = None) -> None:
        """The outstanding hook returned `result` (its awaited value, for an async hook).

        Pass the `call` it answers: a late result of a call the session gave up on (an abort
        while the hook ran) is then dropped instead of answering a newer call."""
        if call is not None and call is not self._call:
            return
        event = self._take_call()
        if event is not None:
            self._finish(event, result)

    def hook_failed(self, exc: BaseException, call: HookCall | None = None) -> None:
        """The outstanding hook raised. The client gets 451 4.3.0; the log gets the traceback."""
        if call is not None and call is not self._call:
            return
        name = self._call.name if self._call else "?"
        log.error("%s: hook %s() raised", self.peer_text, name, exc_info=exc)
        event = self._take_call()
        if event is not None:
            self._finish(event, _WELCOME_ERROR if isinstance(event, Connected) else _INTERNAL_ERROR)

    def tls_started(self, version: str | None = None) -> None:
        self.session.tls_version = version
        self.conn.tls_started()

    # ------------------------------------------------------------------ timeouts, shutdown

    @property
    def idle(self) -> bool:
        """No transaction and no hook in flight: safe to end at shutdown."""
        return self._call is None and self.conn.state in (
            State.CONNECT,
            State.REFUSED,
            State.GREETED,
            State.READY,
        )

    def read_deadline(self) -> float:
        """When the next read times out, on the pump's clock: the idle timeout per command,
        and the DATA deadline for the message as a whole."""
        deadline = self._clock() + self.timeout
        if self._message_started is not None:
            deadline = min(deadline, self._message_started + self.data_timeout)
        return deadline

    def timeout_expired(self) -> bytes:
        """421 4.4.2 and close: the peer was too slow."""
        log.info("%s: timeout", self.peer_text)
        return self.abort(
            Reply(
                code=421,
                text=(f"{self.conn.config.hostname} Error: timeout exceeded",),
                enhanced="4.4.2",
            ),
            "timeout",
        )

    def shutting_down(self) -> bytes:
        """421 4.3.2 and close: the server is stopping."""
        return self.abort(
            Reply(
                code=421,
                text=(f"{self.conn.config.hostname} Service shutting down",),
                enhanced="4.3.2",
            ),
            "shutdown",
        )

    def connection_lost(self) -> None:
        """The connection broke (reset, or EOF while a reply could not be sent): end the
        session without a reply and without running what the peer had pipelined."""
        self.abort(None, "lost")

    def abort(self, reply: Reply | None, reason: str = "aborted") -> bytes:
        """End the session now with `reply`. The transport sends the bytes, then drives
        `next_action()` once more so that the close hook runs, or closes if a hook is stuck."""
        self.close_reason = self.close_reason or reason
        self._call = None
        self._event = None
        self._out += self.conn.abort(reply)
        return self.data_to_send()

    # ------------------------------------------------------------------ internals

    def _take_call(self) -> Event | None:
        """The event whose hook finished; None when the session was aborted meanwhile (the
        late result is dropped)."""
        if self._call is None or self._event is None:
            if self.conn.state is State.CLOSED:
                return None
            raise LocalProtocolError("no hook is running")
        event = self._event
        self._call = None
        self._event = None
        return event

    def _track_message_start(self) -> None:
        receiving = self.conn.state in (State.DATA, State.CHUNKING) or self.conn.reading_chunk
        if not receiving:
            self._message_started = None
        elif self._message_started is None:
            self._message_started = self._clock()

    def _dispatch(self, event: Event) -> HookCall | None:
        if isinstance(event, StartTLS):
            self._out += self.conn.send(Accept())
            return None
        if isinstance(event, Quit):
            return None
        name = _HOOK_OF[type(event)]
        args: tuple[Any, ...]
        if isinstance(event, Connected):
            args = (self.session.client_ip,)
            log.info("connect from %s", self.peer_text)
        elif isinstance(event, Hello):
            args = (event.hostname,)
        elif isinstance(event, AuthCredentials):
            args = (event.username, event.password)
        elif isinstance(event, MailFrom):
            args = (event.sender, event.params)
        elif isinstance(event, RcptTo):
            args = (event.recipient, event.params)
        elif isinstance(event, Message):
            self._message_started = None
            self.envelope.queue_id = self._queue_id()
            content = event.content
            if self.received_header:
                content = self._received(event) + content
            args = (content,)
        elif isinstance(event, Closed):
            self.close_reason = self.close_reason or event.reason
            args = ()
        else:
            args = ()
        mode = self.plan.modes[name]
        if mode is Mode.DEFAULT:
            self._finish(event, _DEFAULTS.get(name, None if name in _NOTIFY else Accept()))
            return None
        fn = getattr(self.handler, name)
        if mode is Mode.INLINE:
            try:
                result = fn(*args)
            except Exception as exc:
                self._call = HookCall(name, fn, args, mode)
                self._event = event
                self.hook_failed(exc)
            else:
                self._finish(event, result)
            return None
        self._call = HookCall(name, fn, args, mode)
        self._event = event
        return self._call

    def _finish(self, event: Event, result: Any) -> None:
        if isinstance(event, Closed):
            self._over = True
            self._log_close()
            return
        if isinstance(event, Reset):
            return
        if not _valid(result, lmtp=isinstance(event, Message) and self.conn.config.lmtp):
            log.error(
                "%s: hook %s() returned %r, not Accept, Reject or Close",
                self.peer_text,
                _HOOK_OF[type(event)],
                result,
            )
            result = _WELCOME_ERROR if isinstance(event, Connected) else _INTERNAL_ERROR
        if isinstance(event, Message):
            result = self._message_done(event, result)
        self._out += self.conn.send(result)

    def _message_done(self, event: Message, result: Any) -> Any:
        qid = self.envelope.queue_id
        if isinstance(result, Accept) and result.text is None:
            result = Accept(f"Ok: queued as {qid}")
        if isinstance(result, Accept):
            self.messages += 1
        log.info(
            "%s: from=<%s> nrcpt=%d size=%d peer=%s decision=%s",
            qid,
            event.sender,
            len(event.recipients),
            len(event.content),
            self.peer_text,
            _describe(result),
        )
        return result

    def _received(self, event: Message) -> bytes:
        conn = self.conn
        proto = "LMTP" if conn.config.lmtp else ("ESMTP" if conn.esmtp else "SMTP")
        if conn.tls_active:
            proto += "S"
        if conn.authenticated_user is not None:
            proto += "A"
        ip = self.session.client_ip
        literal = f"IPv6:{ip}" if ":" in ip else ip
        tls = f"\r\n\t(using {self.session.tls_version})" if self.session.tls_version else ""
        rcpt = f"\r\n\tfor <{event.recipients[0]}>" if len(event.recipients) == 1 else ""
        header = (
            f"Received: from {conn.helo_name or 'unknown'} ([{literal}])"
            f"\r\n\tby {conn.config.hostname} (smtpkit) with {proto} id {self.envelope.queue_id}"
            f"{tls}{rcpt}; {email.utils.formatdate(localtime=True)}\r\n"
        )
        return header.encode("utf-8", errors="replace")

    @property
    def peer_text(self) -> str:
        """The peer as logged: [ip]:port."""
        peer = self.conn.peer
        if peer is None:
            return "unknown"
        return f"[{peer[0]}]:{peer[1]}"

    def _log_close(self) -> None:
        log.info(
            "disconnect from %s reason=%s messages=%d duration=%.3fs",
            self.peer_text,
            self.close_reason,
            self.messages,
            self._clock() - self._started,
        )


def _valid(result: Any, *, lmtp: bool) -> bool:
    if isinstance(result, (Accept, Reject, Close, Reply)):
        return True
    return (
        lmtp
        and isinstance(result, Mapping)
        and all(isinstance(v, (Accept, Reject, Close, Reply)) for v in result.values())
    )


def _describe(result: Any) -> str:
    if isinstance(result, Accept):
        return "accepted"
    if isinstance(result, Reject):
        return f"rejected {result.code or 554}"
    if isinstance(result, Close):
        return f"closed {result.code}"
    if isinstance(result, Reply):
        return f"reply {result.code}"
    return "per-recipient"
