"""The lifecycle every transport shares: admission, deadlines, stress and shutdown.

Each of these is decided here once, I/O-free, on an injected clock; the runners only map the
decisions onto their I/O (a timer, a sweep, a cancel scope). The anchor is Postfix:

- **Per-record deadlines** (`smtpd_per_record_deadline`): a command line must be complete
  within `timeout` of its first byte, so trickling bytes never extends it. While nothing is
  pending, the session may idle for `timeout` from the moment it began to wait.
- **Message content** (`smtpd_min_data_rate`): from the start of the content (`t0`: when
  the engine began to wait for it, after the 354 or a BDAT command), with `B` bytes of it
  received so far and `M` the engine's `Config.max_message_size`, the content deadline is

      t0 + data_timeout + min(B, M) / min_data_rate

  and no pause between two reads may last longer than `timeout`. A client above the minimum
  rate is never cut off, however large a message it may send; one below it is, once its head
  start of `data_timeout` is spent. Bytes past `M` earn no more time: the engine counts and
  discards them (552 follows), and the rest of the message must arrive within `timeout` of
  the byte that crossed `M`, so a content that never ends is cut off `timeout` after it
  passed the limit (`stress_timeout` under stress), however fast it is sent. (`M` is never
  unlimited: the engine requires at least 1; a client that declares SIZE learns of the limit
  at MAIL.) `min_data_rate = 0` makes `data_timeout` a cap on the whole message.
- **Output**: a client that stops reading our replies is cut off `timeout` after our output
  first backed up, whether or not it reads a byte now and then.
- **Hooks**: `hook_timeout` from the hook's start; then the client gets 451 4.3.0 (421 from
  `welcome`) and the hook is abandoned.
- **Stress** (Postfix's `${stress?{10}:{300}}`): while more than 80% of the connection slots
  are in use, every deadline that the peer controls (command, content, output, TLS handshake)
  is at most `stress_timeout` from its reference point, the running ones included: deadlines
  are computed when asked, so a runner re-evaluates them when `stress_epoch` changes. A
  deadline that stress cut stays cut when stress ends (its wait began before stress ended):
  otherwise the first attackers to be cut off would end stress and hand the rest their long
  deadlines back. Hook deadlines do not shrink: a hook is our own code, not the attacker's,
  its run time is bounded by `hook_timeout` and the pool, and cutting it would answer 451 to
  honest clients whose hook waits on a slow DNS or relay hop just when the server is busiest.
- **Shutdown**: stop accepting, 421 4.3.2 to idle sessions, transactions finish within
  `grace_period`, then everything left is cut off and gets `CUTOFF_WAIT` to run its close hook.
  A runner asks `advance()` after every wake-up until it says STOPPED: its timers may fire a
  little before the lifecycle's clock says a phase is over (uvloop's clock is cached in ms).
"""

from __future__ import annotations

import enum
import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, NamedTuple, final

from ._limits import ConnectionLimits

if TYPE_CHECKING:
    from ._observer import Observer
    from ._options import ServerOptions

__all__ = [
    "CUTOFF_WAIT",
    "STRESS_SHARE",
    "Deadline",
    "Expiry",
    "Lifecycle",
    "Phase",
    "Refusal",
    "SessionClock",
    "Slot",
]

log = logging.getLogger("smtpkit")

Clock = Callable[[], float]

#: After the grace period, how long cut-off sessions may take to say 421 and run their close
#: hooks before they are dropped.
CUTOFF_WAIT: Final = 1.0
#: Stress begins when more than this share of `max_connections` is in use.
STRESS_SHARE: Final = 0.8
NEVER: Final = math.inf


class Refusal(enum.Enum):
    """Why a connection is turned away before a session is made (421 4.7.0, then close)."""

    TOO_MANY = "too many connections"
    TOO_MANY_FROM_IP = "too many connections from your address"
    SHUTTING_DOWN = "service shutting down"


class Expiry(enum.Enum):
    """What a passed deadline means, and so what the runner does."""

    #: The peer was too slow to send: 421 4.4.2 (`Pump.timeout_expired()`), then close.
    TIMEOUT = "timeout"
    #: The peer stopped reading our replies: drop the connection, no reply can reach it.
    UNREAD = "unread"
    #: The hook ran too long: 451 4.3.0 (`Pump.hook_timed_out()`), abandon it, go on.
    HOOK = "hook timeout"
    #: The TLS handshake did not finish: drop the connection.
    HANDSHAKE = "handshake timeout"


class Deadline(NamedTuple):
    """When the session's current wait ends (on the lifecycle's clock), and what that means.
    A tuple: one is made for every wait of every session."""

    at: float
    expiry: Expiry


_TIMEOUT: Final = Expiry.TIMEOUT  # bound once: an enum member costs a hook call on Python 3.11


class Phase(enum.Enum):
    """Where the server is in its life."""

    SERVING = "serving"
    #: Shutdown began: no new sessions; idle ones get 421; transactions may finish.
    DRAINING = "draining"
    #: The grace period is over: every session left is cut off.
    CUTTING_OFF = "cutting off"
    #: The cut-off wait is over too: the runner returns, whatever still runs is abandoned.
    STOPPED = "stopped"


@final
class Slot:
    """One admitted connection's place in the limits. Releasing it twice is harmless: a
    connection that fails on two paths at once can never free someone else's slot."""

    __slots__ = ("ip", "released")

    def __init__(self, ip: str) -> None:
        self.ip = ip
        self.released = False

    def __repr__(self) -> str:
        return f"<Slot {self.ip}{' released' if self.released else ''}>"


@final
class Lifecycle:
    """The server-wide decisions, one instance per server (`App.lifecycle`).

    Used from the event loop or I/O thread only, so it needs no lock.
    """

    def __init__(
        self,
        options: ServerOptions,
        clock: Clock = time.monotonic,
        observer: Observer | None = None,
    ) -> None:
        self.options = options
        self.clock = clock
        #: Told of every admission, refusal and release (metrics), when set.
        self.observer = observer
        # A trusted proxy carries other clients: they are counted once its header names them.
        self.limits = ConnectionLimits(
            options.max_connections, options.max_per_ip, exempt=options.proxy_trusted
        )
        self._stress_at = math.floor(options.max_connections * STRESS_SHARE) + 1
        #: True while more than 80% of the slots are in use.
        self.stress = False
        #: When stress last ended (on `clock`): a wait that began before keeps its cut.
        self.stress_ended = -NEVER
        #: Bumped each time stress begins: a runner that sees it change re-evaluates the
        #: deadlines already running (they only ever shrink then).
        self.stress_epoch = 0
        self.phase = Phase.SERVING
        #: When the current shutdown phase ends (NEVER while serving).
        self.phase_ends = NEVER

    # ------------------------------------------------------------------ admission

    @property
    def active_sessions(self) -> int:
        """Admitted connections whose slot is not released yet."""
        return self.limits.active

    def admit(self, ip: str) -> Slot | Refusal:
        """A slot for a new connection from `ip`, or why it is refused."""
        if self.phase is not Phase.SERVING:
            return self._refuse(Refusal.SHUTTING_DOWN)
        reason = self.limits.admit(ip)
        if reason is not None:
            return self._refuse(Refusal(reason))
        self._update_stress()
        if self.observer is not None:
            self.observer.admitted(self.limits.active)
        return Slot(ip)

    def _refuse(self, refusal: Refusal) -> Refusal:
        if self.observer is not None:
            self.observer.refused(refusal.value)
        return refusal

    def readmit(self, slot: Slot, ip: str) -> Refusal | None:
        """Count `slot` under `ip` from now on: the client a PROXY header named, in place of
        the proxy's address. A refusal (and no change) if `ip` is at its per-IP limit."""
        if slot.released or slot.ip == ip:
            return None
        if not self.limits.move(slot.ip, ip):
            return self._refuse(Refusal.TOO_MANY_FROM_IP)
        slot.ip = ip
        return None

    def release(self, slot: Slot | None) -> None:
        """Free `slot` (once; None and a released slot are ignored)."""
        if slot is None or slot.released:
            return
        slot.released = True
        self.limits.release(slot.ip)
        self._update_stress()
        if self.observer is not None:
            self.observer.released(self.limits.active)

    def _update_stress(self) -> None:
        stress = self.limits.active >= self._stress_at
        if stress != self.stress:
            self.stress = stress
            if stress:
                self.stress_epoch += 1
                log.warning(
                    "stress: %d of %d connection slots in use; deadlines cut to %gs",
                    self.limits.active,
                    self.options.max_connections,
                    self.options.stress_timeout,
                )
            else:
                self.stress_ended = self.clock()
                log.info("stress over: %d connection slots in use", self.limits.active)

    # ------------------------------------------------------------------ timeouts now

    def peer_timeout(self, seconds: float, since: float = NEVER) -> float:
        """`seconds`, or `stress_timeout` if that is shorter and the server is under stress,
        or was at any time after `since` (the start of the wait this timeout bounds)."""
        if self.stress or self.stress_ended > since:
            return min(seconds, self.options.stress_timeout)
        return seconds

    # ------------------------------------------------------------------ shutdown

    def begin_shutdown(self) -> None:
        """Stop serving: the grace period starts now."""
        if self.phase is Phase.SERVING:
            self.phase = Phase.DRAINING
            self.phase_ends = self.clock() + self.options.grace_period

    def advance(self, sessions_left: int) -> Phase:
        """The phase now, moving on when the current one is over: DRAINING ends when no
        session is left or at the grace deadline (then CUTTING_OFF: the runner cuts every
        session off), CUTTING_OFF when none is left or `CUTOFF_WAIT` later (STOPPED)."""
        now = self.clock()
        if self.phase is Phase.DRAINING and (not sessions_left or now >= self.phase_ends):
            if sessions_left:
                log.warning("grace period over; cutting off %d sessions", sessions_left)
                self.phase = Phase.CUTTING_OFF
                self.phase_ends = now + CUTOFF_WAIT
            else:
                self.phase = Phase.STOPPED
        if self.phase is Phase.CUTTING_OFF and (not sessions_left or now >= self.phase_ends):
            self.phase = Phase.STOPPED
        if self.phase is Phase.STOPPED:
            self.phase_ends = NEVER
        return self.phase

    @property
    def shutting_down(self) -> bool:
        return self.phase is not Phase.SERVING


@final
class SessionClock:
    """One session's deadlines (see the module docstring for the rules), fed by the pump.

    Every input takes the time from the lifecycle's clock; `deadline()` computes the deadline
    of the current wait from them when asked, so a change of stress applies at once.
    """

    __slots__ = (
        "_content_bytes",
        "_content_over",
        "_content_start",
        "_handshake_start",
        "_hook_start",
        "_idle_since",
        "_last_read",
        "_lifecycle",
        "_record_start",
        "_write_blocked",
    )

    def __init__(self, lifecycle: Lifecycle) -> None:
        self._lifecycle = lifecycle
        now = lifecycle.clock()
        self._idle_since: float | None = now  # waiting for the next command since
        self._record_start: float | None = None  # the first byte of an incomplete line
        self._content_start: float | None = None  # message content expected since
        self._content_bytes = 0
        self._content_over: float | None = None  # the content passed the size limit at
        self._last_read = now
        self._write_blocked: float | None = None
        self._hook_start: float | None = None
        self._handshake_start: float | None = None

    # ------------------------------------------------------------------ inputs

    def received(self, data: bytes | bytearray) -> None:
        """`data` arrived. While the engine waits for message content (see `waiting()`), it
        counts as content."""
        now = self._lifecycle.clock()
        self._last_read = now
        self._idle_since = None  # the wait is over; the next one starts at waiting()
        if self._content_start is not None:
            self._content_bytes += len(data)
            limit = self._lifecycle.options.config.max_message_size
            if self._content_over is None and self._content_bytes > limit:
                self._content_over = now
        end = data.rfind(b"\n")
        if end < 0:
            if self._record_start is None:
                self._record_start = now
        elif end + 1 < len(data):
            self._record_start = now  # a new line began right behind the last one ended
        else:
            self._record_start = None

    def waiting(self, *, content: bool) -> None:
        """The engine needs more data: `content` true while it reads message content."""
        if content:
            if self._content_start is None:
                self._content_start = self._lifecycle.clock()
                self._content_bytes = 0
                self._content_over = None
        else:
            self._content_start = None
        if self._record_start is None and self._idle_since is None:
            self._idle_since = self._lifecycle.clock()

    def hook_started(self) -> None:
        self._hook_start = self._lifecycle.clock()
        self._idle_since = None

    def hook_ended(self) -> None:
        """The time a hook took does not count against the peer's incomplete line."""
        start = self._hook_start
        self._hook_start = None
        if start is not None and self._record_start is not None:
            self._record_start += self._lifecycle.clock() - start

    def handshake_started(self) -> None:
        self._handshake_start = self._lifecycle.clock()

    def handshake_ended(self) -> None:
        self._handshake_start = None
        self._record_start = None
        self._idle_since = self._lifecycle.clock()

    def output_blocked(self) -> None:
        """Our replies back up: the peer does not read them (as fast as we write)."""
        if self._write_blocked is None:
            self._write_blocked = self._lifecycle.clock()

    def output_drained(self) -> None:
        self._write_blocked = None

    # ------------------------------------------------------------------ the answer

    def deadline(self) -> Deadline:
        """The deadline of what the session waits for now."""
        o = self._lifecycle.options
        if self._hook_start is not None:  # never cut by stress (see the module docstring)
            found = Deadline(self._hook_start + o.hook_timeout, Expiry.HOOK)
        elif self._handshake_start is not None:
            at = self._until(self._handshake_start, o.tls_handshake_timeout)
            found = Deadline(at, Expiry.HANDSHAKE)
        else:
            found = Deadline(self._read_deadline(), _TIMEOUT)
        if self._write_blocked is not None:
            unread = self._until(self._write_blocked, o.timeout)
            if unread < found.at:
                found = Deadline(unread, Expiry.UNREAD)
        return found

    def _until(self, since: float, seconds: float) -> float:
        """The end of a peer's wait that began at `since` and may last `seconds`."""
        return since + self._lifecycle.peer_timeout(seconds, since)

    def _read_deadline(self) -> float:
        o = self._lifecycle.options
        if self._content_start is not None:
            at = self._until(self._content_start, o.data_timeout)
            if o.min_data_rate:
                earning = min(self._content_bytes, o.config.max_message_size)
                at += earning / o.min_data_rate
            if self._content_over is not None:
                at = min(at, self._until(self._content_over, o.timeout))
            return min(at, self._until(self._last_read, o.timeout))
        since = self._record_start if self._record_start is not None else self._idle_since
        if since is None:
            return NEVER
        return since + self._lifecycle.peer_timeout(o.timeout, since)
