"""The pump: events to hook calls, decisions to replies. Transport-neutral and I/O-free.

Every transport runs the same loop around it:

    pump.receive_data(data)
    while True:
        action = pump.next_action()
        write(pump.data_to_send())          # always flush before waiting on anything
        if action is NEED_DATA: read more (until pump.deadline()); continue
        if isinstance(action, HookCall): run it (THREAD: worker pool, ASYNC: await on the
            loop), then pump.hook_done(result) or pump.hook_failed(exc); continue
        if action is START_TLS: handshake, then pump.tls_started(version); continue
        if action is CLOSE: close the socket; stop

Hooks the handler does not override, and plain hooks of a non-blocking handler, are run here
inline, so they never cost a trip to the pool. Events map to hooks through one table,
`_ROUTES`. Whatever the session waits for, `deadline()` says until when, and what to do then
(`_lifecycle.SessionClock` holds the rules).
"""

from __future__ import annotations

import enum
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Final, final

from smtp_core import (
    AuthCredentials,
    Closed,
    CloseReason,
    Connected,
    EndOfMessage,
    Event,
    Hello,
    LocalProtocolError,
    MailFrom,
    MailParams,
    MessageAborted,
    MessageData,
    Quit,
    RcptParams,
    RcptTo,
    Reply,
    Reset,
    ServerConnection,
    Signal,
    StartTLS,
    State,
)
from smtpkit.handlers import (
    PLANNED_HOOKS,
    Accept,
    Close,
    Envelope,
    Handler,
    HookResult,
    Message,
    Mode,
    Reject,
    Session,
    modes_of,
)
from smtpkit.handlers._trace import log_escape, received_header

from ._lifecycle import Deadline, Lifecycle, SessionClock, Slot
from ._logging import fields
from ._observer import Observer
from ._spool import Spool, Spooler

__all__ = [
    "CLOSE",
    "NEED_DATA",
    "START_TLS",
    "Action",
    "HookArg",
    "HookCall",
    "HookOutcome",
    "HookPlan",
    "Mode",
    "Pump",
    "Wait",
    "new_queue_id",
    "plan_for",
]

log = logging.getLogger("smtpkit")


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
# Bound once: an enum member costs a hook call on Python 3.11, and these are read every command.
_ENGINE_NEEDS_DATA: Final = Signal.NEED_DATA
_ENGINE_PAUSED: Final = Signal.PAUSED
_DEFAULT: Final = Mode.DEFAULT
_INLINE: Final = Mode.INLINE


#: What a hook is called with: names, addresses, parameters, the message.
HookArg = str | Message | MailParams | RcptParams
#: What calling a hook gives: a decision (None from `reset` and `close`), or for an
#: `async def` hook an awaitable of one.
HookOutcome = HookResult | None | Awaitable[HookResult | None]


@final
@dataclass(frozen=True, slots=True)
class HookCall:
    """Run `fn(*args)` where `mode` says, then report with `hook_done()` or `hook_failed()`."""

    name: str
    fn: Callable[..., HookOutcome]
    args: tuple[HookArg, ...]
    mode: Mode


Action = HookCall | Wait


@final
@dataclass(frozen=True, slots=True)
class HookPlan:
    """Where each hook of a handler runs, worked out once per set of modes."""

    modes: Mapping[str, Mode]
    #: Events the engine may accept by itself: their hooks are not overridden.
    auto_accept: frozenset[type[Event]]

    @property
    def async_hooks(self) -> tuple[str, ...]:
        return tuple(name for name, mode in self.modes.items() if mode is Mode.ASYNC)

    @property
    def offers_auth(self) -> bool:
        return self.modes["auth"] is not Mode.DEFAULT


#: One plan per distinct set of modes (a handful in any program).
_PLANS: dict[tuple[Mode, ...], HookPlan] = {}


def plan_for(handler: Handler | type[Handler]) -> HookPlan:
    """The HookPlan of a handler, or of a handler class: where its hooks run, as its
    `hook_modes()` say (read from the class, or a Pipeline's own), computed on first use."""
    modes = modes_of(handler) if isinstance(handler, type) else handler.hook_modes()
    key = tuple(modes[name] for name in PLANNED_HOOKS)
    plan = _PLANS.get(key)
    if plan is None:
        plan = _PLANS[key] = _make_plan(dict(zip(PLANNED_HOOKS, key, strict=True)))
    return plan


def _make_plan(modes: dict[str, Mode]) -> HookPlan:
    auto = frozenset(
        event for event in _AUTO_ACCEPTABLE if modes[_ROUTES[event].hook or ""] is Mode.DEFAULT
    )
    return HookPlan(modes, auto)


def new_queue_id() -> str:
    """A Postfix-looking queue ID: 12 hex digits. Random, so forked processes don't collide."""
    return f"{random.getrandbits(48):012X}"


_INTERNAL_ERROR: Final = Reply(code=451, text=("Error: internal server error",), enhanced="4.3.0")
_WELCOME_ERROR: Final = Reply(code=421, text=("Error: internal server error",), enhanced="4.3.0")
_BUSY_TEXT: Final = ("Error: server busy, try again later",)
_UNAVAILABLE: Final = Reply(code=451, text=_BUSY_TEXT, enhanced="4.3.0")
_WELCOME_UNAVAILABLE: Final = Reply(code=421, text=_BUSY_TEXT, enhanced="4.3.0")
_ACCEPT: Final = Accept()
_NO_STORAGE: Final = Reply(code=452, text=("Error: insufficient system storage",), enhanced="4.3.1")


@final
@dataclass(frozen=True, slots=True)
class _Route:
    """What the pump does with one kind of event."""

    #: The Handler hook it calls; None: the pump answers it itself (STARTTLS, QUIT).
    hook: str | None
    #: The event's fields passed to the hook, in order.
    fields: tuple[str, ...] = ()
    #: The answer when no hook runs; None when the event takes none.
    default: HookResult | None = _ACCEPT
    #: Work done before the hook is called, which gives its arguments instead of `fields`,
    #: or the answer to send without calling it.
    prepare: Callable[[Pump, Event], tuple[HookArg, ...] | Reply] | None = None


_ROUTES: Final[Mapping[type[Event], _Route]] = {
    Connected: _Route("welcome", prepare=lambda pump, event: pump._connected()),
    Hello: _Route("ehlo", ("hostname",)),
    AuthCredentials: _Route("auth", ("username", "password"), default=Reject()),
    MailFrom: _Route("mail", ("sender", "params")),
    RcptTo: _Route("rcpt", ("recipient", "params")),
    EndOfMessage: _Route("data", prepare=lambda pump, event: pump._message_arrived(event)),
    MessageAborted: _Route(None, default=None, prepare=lambda pump, event: pump._aborted(event)),
    StartTLS: _Route(None),
    Quit: _Route(None, default=None),
    Reset: _Route("reset", default=None),
    Closed: _Route("close", default=None, prepare=lambda pump, event: pump._closed(event)),
}
# The welcome hook stays with the pump (it logs the connection), and data too (queue IDs).
_AUTO_ACCEPTABLE: Final = (Hello, MailFrom, RcptTo)


@final
class Pump:
    """Drives one ServerConnection for one handler."""

    def __init__(
        self,
        conn: ServerConnection,
        handler: Handler,
        *,
        lifecycle: Lifecycle,
        received_header: bool = True,
        tls_version: str | None = None,
        queue_id: Callable[[], str] = new_queue_id,
        spooler: Spooler | None = None,
        observer: Observer | None = None,
        slot: Slot | None = None,
    ) -> None:
        self.conn = conn
        #: The connection's place in the limits: moved to the client a PROXY header names.
        self.slot = slot
        #: The proxy a PROXY header comes from, as logged; None when there is none.
        self._via = self.peer_text if conn.state is State.PROXY else None
        #: The client the last `Connected` was for, as logged (XCLIENT starts over as another).
        self._connected_as: str | None = None
        self.handler = handler
        self.plan = plan_for(handler)
        self.session = Session(conn, tls_version)
        self.envelope = Envelope(conn)
        handler.bind(self.session, self.envelope)
        self.lifecycle = lifecycle
        #: The session's deadlines; the runner reports its output backing up to it.
        self.clock = SessionClock(lifecycle)
        # Bound once: the runners call these two at every wait.
        #: Every reply so far, in command order: the engine's one output buffer, drained.
        self.data_to_send: Callable[[], bytes] = conn.data_to_send
        #: Until when the session may wait for what it waits for now (the peer's next bytes,
        #: a hook, a handshake, the peer reading our output), on the lifecycle's clock, and
        #: what its expiry means. Computed when asked: ask again when the timer fires (the
        #: deadline may have moved on) and when `lifecycle.stress_epoch` changes.
        self.deadline: Callable[[], Deadline] = self.clock.deadline
        self.received_header = received_header
        self._queue_id = queue_id
        self.spooler = spooler if spooler is not None else _default_spooler()
        #: The content of the message in progress, from DATA/BDAT until it is answered.
        self._spool: Spool | None = None
        self._started = lifecycle.clock()
        self._stress = False
        self._call: HookCall | None = None
        self._event: Event | None = None
        self._over = False
        self.messages = 0
        self.close_reason = ""
        #: Told of decisions, hook run times, TLS and the session's end (metrics), when set.
        self.observer = observer
        self._hook_start = 0.0
        #: Where the session was when the peer went away (EOF, reset), for the metrics.
        self._lost_at: State | None = None
        if observer is not None and tls_version is not None:
            observer.tls_started(tls_version)

    # ------------------------------------------------------------------ the loop

    def receive_data(self, data: bytes | bytearray) -> None:
        """Bytes from the peer; b"" when it closed its side. Plaintext that arrives while the
        engine waits for the STARTTLS handshake is an injection attempt (RFC 3207 5): dropped
        here, never fed to the engine."""
        if data:
            try:
                self.conn.receive_data(data)
            except LocalProtocolError:  # asking the state first would cost every read
                if self.conn.state is not State.STARTTLS:
                    raise
                log.info("%s: %d bytes behind STARTTLS dropped", self.peer_text, len(data))
                return
            self.clock.received(data)
            return
        if self._lost_at is None:
            self._lost_at = self.conn.state
        self.conn.receive_data(data)

    def next_action(self) -> Action:
        """What the transport must do next. Never call it while a HookCall is outstanding."""
        if self._call is not None:
            raise LocalProtocolError(f"hook {self._call.name} is still running")
        if self._stress is not self.lifecycle.stress:
            self._stress = self.conn.stress = self.lifecycle.stress
        while not self._over:
            event = self.conn.next_event()
            if type(event) is MessageData:  # the hot path: content to the spool
                (self._spool or self._start_spool()).write(event.data)
                continue
            if event is _ENGINE_NEEDS_DATA:
                self.clock.waiting(content=self.conn.reading_content)
                return NEED_DATA
            if event is _ENGINE_PAUSED:
                if self.conn.state is State.STARTTLS or self.conn.state is State.HANDSHAKE:
                    self.clock.handshake_started()
                    return START_TLS
                raise LocalProtocolError("engine paused with no hook running")
            action = self._dispatch(event)
            if action is not None:
                return action
        return CLOSE

    def hook_done(self, result: HookResult | None, call: HookCall | None = None) -> None:
        """The outstanding hook returned `result` (its awaited value, for an async hook).

        Pass the `call` it answers: a late result of a call the session gave up on (an abort
        while the hook ran) is then dropped instead of answering a newer call."""
        if call is not None and call is not self._call:
            return
        event = self._take_call()
        if event is not None:
            self._finish(event, result)

    def hook_failed(self, exc: BaseException, call: HookCall | None = None) -> None:
        """The outstanding hook raised (anything, SystemExit included). The client gets
        451 4.3.0 (421 from `welcome`); the log gets one line with the traceback."""
        if call is not None and call is not self._call:
            return
        name = self._call.name if self._call else "?"
        log.error("%s: hook %s() raised %r", self.peer_text, name, exc, exc_info=exc)
        self._give_up(_INTERNAL_ERROR, _WELCOME_ERROR)

    def hook_timed_out(self, call: HookCall | None = None) -> None:
        """The outstanding hook ran past `hook_timeout`: answer 451 4.3.0 (421 from `welcome`)
        and go on; its late result, if it ever comes, is dropped. The runner abandons it."""
        if call is not None and call is not self._call:
            return
        name = self._call.name if self._call else "?"
        log.error(
            "%s: hook %s() still running after %gs; answered 451",
            self.peer_text,
            name,
            self.lifecycle.options.hook_timeout,
        )
        self._give_up(_INTERNAL_ERROR, _WELCOME_ERROR)

    def hook_unavailable(self, call: HookCall | None = None) -> None:
        """The outstanding hook could not be run (every spare worker is stuck): 451 4.3.0
        (421 from `welcome`) at once."""
        if call is not None and call is not self._call:
            return
        name = self._call.name if self._call else "?"
        log.warning("%s: no worker for hook %s(): too many stuck hooks", self.peer_text, name)
        self._give_up(_UNAVAILABLE, _WELCOME_UNAVAILABLE)

    def trailing_data(self) -> bytes:
        """At START_TLS, what the engine read that belongs to the handshake: the bytes that
        came right behind the PROXY header on an implicit-TLS proxy listener (b"" after
        STARTTLS). Hand them to TLS before anything read from the socket."""
        return self.conn.trailing_data

    def tls_started(self, version: str | None = None) -> None:
        """The STARTTLS handshake (or the one after a PROXY header) finished. Call it before
        feeding any byte that arrived over TLS: the engine drops (or refuses) bytes fed while
        it waits for the handshake."""
        self.session.tls_version = version
        self.conn.tls_started()
        self.clock.handshake_ended()
        if self.observer is not None and version is not None:
            self.observer.tls_started(version)

    # ------------------------------------------------------------------ timeouts, shutdown

    @property
    def idle(self) -> bool:
        """No transaction and no hook in flight: safe to end at shutdown."""
        return self._call is None and not self.conn.in_transaction

    def timeout_expired(self) -> bytes:
        """421 4.4.2 and close: the peer was too slow."""
        log.info("%s: timeout", self.peer_text, extra=fields({"peer": self.peer_text}))
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
        if self._lost_at is None:
            self._lost_at = self.conn.state
        self.abort(None, "lost")

    def abort(self, reply: Reply | None, reason: str = "aborted") -> bytes:
        """End the session now with `reply`. The transport sends the bytes, then drives
        `next_action()` once more so that the close hook runs, or closes if a hook is stuck."""
        self.close_reason = self.close_reason or reason
        self._call = None
        self._event = None
        self.clock.hook_ended()
        self.clock.handshake_ended()
        self._drop_spool()
        self.conn.abort(reply)
        return self.conn.data_to_send()

    # ------------------------------------------------------------------ internals

    def _take_call(self) -> Event | None:
        """The event whose hook finished; None when the session was aborted meanwhile (the
        late result is dropped)."""
        if self._call is None or self._event is None:
            if self.conn.state is State.CLOSED:
                return None
            raise LocalProtocolError("no hook is running")
        event = self._event
        if self.observer is not None:
            self.observer.hook_finished(self._call.name, self.lifecycle.clock() - self._hook_start)
        self._call = None
        self._event = None
        self.clock.hook_ended()
        return event

    def _give_up(self, error: Reply, welcome_error: Reply) -> None:
        """Answer the outstanding hook's event without it."""
        event = self._take_call()
        if event is not None:
            self._finish(event, welcome_error if type(event) is Connected else error)

    def _dispatch(self, event: Event) -> HookCall | None:
        route = _ROUTES[type(event)]
        if route.prepare is not None:
            prepared = route.prepare(self, event)
            if isinstance(prepared, Reply):
                self._finish(event, prepared)
                return None
            args = prepared
        else:
            args = tuple(getattr(event, name) for name in route.fields)
        mode = _DEFAULT if route.hook is None else self.plan.modes[route.hook]
        if mode is _DEFAULT or route.hook is None:
            self._finish(event, route.default)
            return None
        fn: Callable[..., HookOutcome] = getattr(self.handler, route.hook)
        call = self._call = HookCall(route.hook, fn, args, mode)
        self._event = event
        self.clock.hook_started()
        if self.observer is not None:
            self._hook_start = self.lifecycle.clock()
        if mode is _INLINE:
            try:
                result = fn(*args)
            except BaseException as exc:  # a hook's SystemExit is the hook's failure
                self.hook_failed(exc, call)
            else:
                self.hook_done(result, call)  # type: ignore[arg-type]  # INLINE: not async
            return None
        return call

    def _connected(self) -> tuple[HookArg, ...] | Reply:
        peer, before = self.peer_text, self._connected_as
        self._connected_as = peer
        if before is not None:  # XCLIENT: the session starts over for the client it names
            log.info("%s: XCLIENT as %s", before, peer, extra=fields({"peer": before, "as": peer}))
            return (self.session.client_ip,)
        if self._via is None:
            log.info("connect from %s", peer, extra=fields({"peer": peer}))
            return (self.session.client_ip,)
        via = self._via
        log.info("connect from %s via %s", peer, via, extra=fields({"peer": peer, "via": via}))
        if self.slot is not None:  # the per-IP limit counts the client, not the proxy
            refusal = self.lifecycle.readmit(self.slot, self.session.client_ip)
            if refusal is not None:
                log.info("refused %s: %s", peer, refusal.value, extra=fields({"peer": peer}))
                self.close_reason = refusal.value
                text = f"{self.conn.config.hostname} Error: {refusal.value}"
                return Reply(code=421, text=(text,), enhanced="4.7.0")
        return (self.session.client_ip,)

    def _message_arrived(self, event: Event) -> tuple[HookArg, ...] | Reply:
        spool = self._spool or self._start_spool()  # an empty message has no MessageData
        if self.observer is not None:
            assert isinstance(event, EndOfMessage)
            self.observer.message_received(event.size)
        if spool.overflowed:
            return _NO_STORAGE
        return (spool.message(),)

    def _start_spool(self) -> Spool:
        """The spool of the message that begins, its `Received:` header written first."""
        self.envelope.queue_id = self._queue_id()
        spool = self._spool = self.spooler.new()
        if self.received_header:
            spool.write(self._received())
        return spool

    def _aborted(self, event: Event) -> tuple[HookArg, ...]:
        assert type(event) is MessageAborted
        if self._spool is not None:
            peer, size, reason = self.peer_text, self._spool.size, event.reason.value
            log.info(
                "%s: message aborted after %d bytes: %s",
                peer,
                size,
                reason,
                extra=fields({"peer": peer, "size": size, "reason": reason}),
            )
        self._drop_spool()
        return ()

    def _drop_spool(self) -> None:
        spool, self._spool = self._spool, None
        if spool is not None:
            spool.discard()

    def _closed(self, event: Event) -> tuple[HookArg, ...]:
        assert type(event) is Closed
        error = self.conn.proxy_error  # say which: missing, malformed or too long
        self.close_reason = self.close_reason or (error or event.reason).value
        return ()

    def _finish(self, event: Event, result: HookResult | None) -> None:
        route = _ROUTES[type(event)]
        if type(event) is Closed:
            self._over = True
            self._log_close()
            return
        if route.default is None:  # a notification (reset): nothing to answer
            return
        try:
            answer = self.conn.check_answer(result, event)
        except LocalProtocolError:
            log.error(
                "%s: hook %s() returned %r, not Accept, Reject or Close",
                self.peer_text,
                route.hook,
                result,
            )
            answer = _WELCOME_ERROR if type(event) is Connected else _INTERNAL_ERROR
        if type(event) is EndOfMessage:
            assert isinstance(event, EndOfMessage)
            answer = self._message_done(event, answer)
            self._drop_spool()
        self.conn.send(answer, event)
        if self.observer is not None and route.hook is not None:
            for code in self.conn.answered_codes:
                self.observer.answered(route.hook, code)

    def _message_done(self, event: EndOfMessage, result: HookResult) -> HookResult:
        qid = self.envelope.queue_id
        if isinstance(result, Accept) and result.text is None:
            result = Accept(f"Ok: queued as {qid}")
        if isinstance(result, Accept):
            self.messages += 1
        if not log.isEnabledFor(logging.INFO):
            return result
        line = {
            "queue_id": qid,
            "from": log_escape(event.sender),
            "nrcpt": len(event.recipients),
            "size": event.size,
            "peer": self.peer_text,
            "decision": _describe(result),
        }
        log.info(
            "%s: from=<%s> nrcpt=%d size=%d peer=%s decision=%s",
            *line.values(),
            extra=fields(line),
        )
        return result

    def _received(self) -> bytes:
        return received_header(
            self.session,
            self.envelope,
            hostname=self.conn.config.hostname,
            queue_id=self.envelope.queue_id,
        )

    @property
    def peer_text(self) -> str:
        """The peer as logged: [ip]:port."""
        peer = self.conn.peer
        if peer is None:
            return "unknown"
        return f"[{peer[0]}]:{peer[1]}"

    def _log_close(self) -> None:
        if self.observer is not None:
            lost = self._lost_at if self.close_reason in _LOST else None
            stage = None if lost is None else lost.value.lower()
            self.observer.session_closed(self.close_reason, stage)
        line = {
            "peer": self.peer_text,
            "reason": self.close_reason,
            "messages": self.messages,
            "duration": round(self.lifecycle.clock() - self._started, 3),
        }
        log.info(
            "disconnect from %s reason=%s messages=%d duration=%.3fs",
            *line.values(),
            extra=fields(line),
        )


#: Close reasons that mean the peer went away without QUIT: the engine's EOF, and a reset.
_LOST: Final = frozenset({CloseReason.EOF.value, "lost"})

_DEFAULT_SPOOLER: list[Spooler] = []


def _default_spooler() -> Spooler:
    """The spool of pumps made without a server (tests, embedding): one per process."""
    if not _DEFAULT_SPOOLER:
        _DEFAULT_SPOOLER.append(Spooler())
    return _DEFAULT_SPOOLER[0]


def _describe(result: HookResult) -> str:
    if isinstance(result, Accept):
        return "accepted"
    if isinstance(result, Reject):
        return f"rejected {result.code or 554}"
    if isinstance(result, Close):
        return f"closed {result.code}"
    if isinstance(result, Reply):
        return f"reply {result.code}"
    return "per-recipient"
