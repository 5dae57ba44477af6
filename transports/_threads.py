"""The threads transport: the seed's model, one I/O thread plus a pool of workers.

The thread that calls `run()` multiplexes every socket with `selectors` and drives each
session's `Pump` (see its docstring for the loop). Plain hooks of a blocking handler run on a
bounded `ThreadPoolExecutor`; a worker hands its result back through a deque and wakes the I/O
thread with one byte on a socketpair. TLS goes through `ssl.MemoryBIO`, so the selector only
ever watches raw sockets and there is no hidden buffer inside an `SSLSocket` to forget.

Per connection: a write buffer (EVENT_WRITE is asked for only while it holds bytes), no reads
while a hook runs or while the buffer is past `_HIGH_WATER` (so a pipelined flood stays
bounded), and one deadline (the pump's, see `_lifecycle`), checked by a sweep that runs when
the nearest deadline is due, and over every connection when stress begins.
After the last reply the socket is half-closed and lingers until the peer's EOF, so that
closing never resets a connection whose last reply is still in flight.
Async hooks need an event loop; `check()` refuses them before the server binds.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import math
import selectors
import socket
import ssl
import time
from collections.abc import Callable
from typing import Final, final

from ._lifecycle import Expiry, Phase, Refusal, Slot
from ._options import LINGER, App
from ._pump import CLOSE, NEED_DATA, START_TLS, HookCall, HookOutcome, Mode, Pump, plan_for
from ._server import Runner
from ._workers import Job, WorkerPool

__all__ = ["ThreadsRunner"]

log = logging.getLogger("smtpkit")

_READ: Final = selectors.EVENT_READ
_WRITE: Final = selectors.EVENT_WRITE
#: Bytes per recv().
_READ_SIZE: Final = 65536
#: Stop reading from a peer while this much of our output to it is unsent.
_HIGH_WATER: Final = 256 * 1024
#: Connections accepted per readiness of a listener, so that one busy port can't starve the rest.
_ACCEPT_BATCH: Final = 64
#: The longest select() wait.
_MAX_WAIT: Final = 1.0
#: After the session is over, how long its last replies may take to drain.
_CLOSE_FLUSH: Final = 10.0
#: How long to stop accepting after accept() ran out of file descriptors or memory.
_ACCEPT_PAUSE: Final = 0.5
_ACCEPT_RESOURCE_ERRORS: Final = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
)
_NEVER: Final = math.inf

# A connection's phase. RUN: the pump is driven (reading, or a hook running). TLS_PENDING: the
# 220 to STARTTLS is still draining in plaintext. HANDSHAKE: the TLS handshake is running.
# CLOSING: the session is over; the last bytes drain. LINGER: all sent and our side shut
# down; what still arrives is discarded until the peer's EOF, then the socket closes (closing
# with unread input would reset the connection and could destroy the last reply in flight).
_RUN: Final = 0
_TLS_PENDING: Final = 1
_HANDSHAKE: Final = 2
_CLOSING: Final = 3
_LINGER: Final = 4
_WAKE: Final = object()


@final
class _TLS:
    __slots__ = ("incoming", "obj", "outgoing")

    def __init__(self, context: ssl.SSLContext) -> None:
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = context.wrap_bio(self.incoming, self.outgoing, server_side=True)


@final
class _Listener:
    __slots__ = ("proxy", "sock", "tls")

    def __init__(self, sock: socket.socket, tls: bool, proxy: bool) -> None:
        self.sock = sock
        self.tls = tls
        #: A PROXY header opens each connection (before the TLS handshake on an SMTPS one).
        self.proxy = proxy


@final
class _Conn:
    """One client connection, owned by the I/O thread."""

    __slots__ = (
        "busy",
        "closed",
        "dead",
        "deadline",
        "eof",
        "job",
        "mask",
        "out",
        "peer",
        "phase",
        "pump",
        "refusal",
        "slot",
        "sock",
        "started",
        "ticket",
        "tls",
    )

    #: Set once the session exists: at accept, or after the handshake on an SMTPS listener.
    pump: Pump

    def __init__(self, sock: socket.socket, peer: tuple[str, int], slot: Slot | None) -> None:
        self.sock = sock
        self.peer = peer
        #: The connection's place in the limits; None for a refused one (SMTPS: it gets its
        #: 421 after the handshake, like on every other transport).
        self.slot = slot
        self.refusal = b""
        self.started = False
        self.phase = _RUN
        #: A hook is running on the pool.
        self.busy = False
        #: The pump has been told about EOF.
        self.eof = False
        #: The socket is broken: nothing more can be sent.
        self.dead = False
        self.closed = False
        self.out = bytearray()
        #: The selector events registered now (0: not registered).
        self.mask = 0
        self.deadline = _NEVER
        #: Numbers the hook calls, so that a late result of an aborted hook is dropped.
        self.ticket = 0
        self.job: Job[HookOutcome] | None = None
        self.tls: _TLS | None = None

    def __repr__(self) -> str:
        return f"[{self.peer[0]}]:{self.peer[1]}"


@final
class ThreadsRunner(Runner):
    """One I/O thread multiplexes every connection; a bounded pool runs the plain hooks."""

    name = "threads"

    @classmethod
    def check(cls, app: App) -> None:
        handler = app.factory()
        hooks = plan_for(handler).async_hooks
        if hooks:
            names = ", ".join(f"{name}()" for name in hooks)
            raise ValueError(
                f"the threads transport cannot run async hooks ({type(handler).__name__}: {names});"
                " use --transport asyncio or --transport anyio, or make them plain def"
            )

    def __init__(self, app: App) -> None:
        super().__init__(app)
        o = app.options
        self._lifecycle = app.lifecycle
        self._stress_epoch = 0
        self._ssl_context = o.ssl_context
        self._handshake_timeout = o.tls_handshake_timeout
        self._close_flush = min(_CLOSE_FLUSH, o.timeout)
        # Deadlines are checked at most this late; a sweep costs one pass over the connections.
        self._slack = min(
            0.5,
            o.timeout / 20,
            o.data_timeout / 20,
            o.tls_handshake_timeout / 20,
            o.stress_timeout / 20,
        )
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stopping = False
        self._wake_pending = False
        self._done: collections.deque[tuple[_Conn, int, bool, HookOutcome | BaseException]] = (
            collections.deque()
        )
        self._conns: set[_Conn] = set()
        self._listeners: list[_Listener] = []
        self._sel: selectors.BaseSelector = selectors.DefaultSelector()
        self._pool = WorkerPool(o.workers, observer=app.observer)
        self._next_sweep = _NEVER
        self._accept_paused_until = 0.0
        self._shutting_down = False

    # ------------------------------------------------------------------ Runner

    def stop(self) -> None:
        """Ask for a graceful shutdown. Safe from any thread and from a signal handler."""
        self._stopping = True
        self._wake()

    def run(
        self,
        listeners: list[socket.socket],
        tls_listeners: list[socket.socket],
        ready: Callable[[], None],
    ) -> None:
        proxied = self.app.proxied
        self._listeners = [_Listener(s, False, proxied(s.getsockname())) for s in listeners]
        self._listeners += [_Listener(s, True, proxied(s.getsockname())) for s in tls_listeners]
        try:
            self._sel.register(self._wake_r, _READ, _WAKE)
            for listener in self._listeners:
                self._sel.register(listener.sock, _READ, listener)
            ready()
            self._loop()
        finally:
            self._teardown()

    # ------------------------------------------------------------------ the I/O loop

    def _loop(self) -> None:
        select = self._sel.select
        monotonic = time.monotonic
        conn_type = _Conn
        lifecycle = self._lifecycle
        while True:
            wait = min(self._next_sweep, lifecycle.phase_ends) - monotonic()
            for key, events in select(min(wait, _MAX_WAIT) if wait > 0 else 0):
                obj = key.data
                if obj.__class__ is conn_type:
                    if obj.closed:
                        continue  # closed earlier in this batch
                    try:
                        if events & _WRITE:
                            self._on_writable(obj)
                        if events & _READ and obj.mask & _READ:
                            self._on_readable(obj)
                    except Exception:
                        self._crash(obj)
                elif obj is _WAKE:
                    self._on_wake()
                else:
                    self._accept(obj)
            now = monotonic()
            if lifecycle.stress_epoch != self._stress_epoch:
                self._stress_epoch = lifecycle.stress_epoch
                self._next_sweep = now  # stress shortens the deadlines already running
            if now >= self._next_sweep:
                self._sweep(now)
            if self._stopping:
                if not self._shutting_down:
                    self._begin_shutdown()
                before = lifecycle.phase
                phase = lifecycle.advance(len(self._conns))
                if phase is Phase.STOPPED:
                    return  # close hooks still queued behind stuck ones are abandoned
                if phase is Phase.CUTTING_OFF and before is Phase.DRAINING:
                    self._cut_off()

    def _on_wake(self) -> None:
        # Drain the bytes, then clear the flag, then drain the results: a result appended after
        # the flag is cleared comes with a new byte; one appended before is in the deque.
        # (Clearing first would lose a wake-up: a byte sent in between would be eaten while
        # the flag stays set.)
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        self._wake_pending = False
        done = self._done
        while done:
            c, ticket, ok, result = done.popleft()
            if c.closed or not c.busy or ticket != c.ticket:
                continue  # the session was aborted or closed while the hook ran
            c.busy = False
            c.job = None
            try:
                if not ok:
                    assert isinstance(result, BaseException)
                    c.pump.hook_failed(result)
                else:
                    assert not isinstance(result, BaseException)
                    c.pump.hook_done(result)  # type: ignore[arg-type]  # THREAD: not async
                if c.dead and not c.eof:
                    c.eof = True
                    c.pump.connection_lost()
                self._drive(c)
            except Exception:
                self._crash(c)

    def _wake(self) -> None:
        # A plain try (no contextlib): this runs in signal handlers and once per hook result.
        try:  # noqa: SIM105
            self._wake_w.send(b"\0", socket.MSG_DONTWAIT)
        except OSError:  # full (a wake-up is pending anyway) or closed (run() is over)
            pass

    def _reporter(self, c: _Conn) -> Callable[[bool, HookOutcome | BaseException], None]:
        """What a worker calls with the outcome of `c`'s current hook: it hands it to the I/O
        thread."""
        ticket = c.ticket

        def report(ok: bool, result: HookOutcome | BaseException) -> None:
            self._done.append((c, ticket, ok, result))
            if not self._wake_pending:
                self._wake_pending = True
                self._wake()

        return report

    # ------------------------------------------------------------------ accepting

    def _accept(self, listener: _Listener) -> None:
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, addr = listener.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno not in _ACCEPT_RESOURCE_ERRORS:
                    log.warning("accept() failed: %s", exc)
                    return
                log.error("accept() failed: %s; not accepting for %.1fs", exc, _ACCEPT_PAUSE)
                self._pause_accepting(time.monotonic() + _ACCEPT_PAUSE)
                return
            self._admit(sock, (addr[0], addr[1]), listener.tls, listener.proxy)

    def _admit(self, sock: socket.socket, peer: tuple[str, int], tls: bool, proxy: bool) -> None:
        slot = self._lifecycle.admit(peer[0])
        if isinstance(slot, Refusal):
            log.info("refused connection from [%s]:%d: %s", peer[0], peer[1], slot.value)
            refusal = self.app.refusal(slot)
            if not tls or proxy:
                try:  # noqa: SIM105
                    sock.send(refusal, socket.MSG_DONTWAIT)
                except OSError:
                    pass
                sock.close()
                return
            c = _Conn(sock, peer, None)  # SMTPS: the 421 goes out after the handshake
            c.refusal = refusal
        else:
            c = _Conn(sock, peer, slot)
        self._conns.add(c)
        try:
            sock.setblocking(False)
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if tls and not proxy:
                handshake = self._lifecycle.peer_timeout(self._handshake_timeout)
                self._set_deadline(c, time.monotonic() + handshake)
                self._start_tls(c)
            else:  # behind a proxy, the session reads the header before any handshake
                c.pump = self.app.new_session(peer, tls=tls, proxy=proxy, slot=c.slot)
                c.started = True
                self._drive(c)
        except Exception:
            self._crash(c)

    def _pause_accepting(self, until: float) -> None:
        for listener in self._listeners:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(listener.sock)
        self._accept_paused_until = until
        self._next_sweep = min(self._next_sweep, until)

    def _resume_accepting(self) -> None:
        self._accept_paused_until = 0.0
        for listener in self._listeners:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._sel.register(listener.sock, _READ, listener)

    # ------------------------------------------------------------------ driving a session

    def _drive(self, c: _Conn) -> None:
        """Run the pump until it waits on something: input, a hook, a flush, or the end."""
        pump = c.pump
        while True:
            action = pump.next_action()
            data = pump.data_to_send()
            if data:
                self._send(c, data)
            if action is NEED_DATA:
                if c.dead:
                    if c.eof:
                        raise RuntimeError("the engine asks for data after EOF")
                    c.eof = True
                    pump.connection_lost()
                    continue
                if self._shutting_down and pump.idle:
                    self._send(c, pump.shutting_down())
                    continue
                self._set_deadline(c, pump.deadline().at)
                break
            if isinstance(action, HookCall):
                if action.mode is not Mode.THREAD:
                    pump.hook_failed(RuntimeError(f"{action.name}() can't run on threads"))
                    continue
                c.ticket += 1
                c.job = self._pool.submit(action.fn, action.args, self._reporter(c))
                if c.job is None:
                    pump.hook_unavailable(action)
                    continue
                c.busy = True
                self._set_deadline(c, pump.deadline().at)
                break
            if action is START_TLS:
                if c.dead:
                    c.eof = True
                    pump.connection_lost()
                    continue
                c.phase = _TLS_PENDING
                self._set_deadline(c, pump.deadline().at)
                if not c.out:
                    self._start_tls(c)
                    return
                break
            assert action is CLOSE
            c.phase = _CLOSING
            tls = c.tls
            if tls is not None and not c.dead:
                with contextlib.suppress(ssl.SSLError, ValueError):
                    tls.obj.unwrap()  # queues our close_notify; the peer's is not awaited
                self._send_raw(c, tls.outgoing.read())
            if not c.out or c.dead:
                self._linger(c)
                return
            self._set_deadline(c, time.monotonic() + self._close_flush)
            break
        self._update(c)

    def _update(self, c: _Conn) -> None:
        """Register the selector events this connection waits for, when they changed."""
        if c.closed:
            return
        phase = c.phase
        if phase == _RUN:
            want = 0 if c.busy or c.eof or c.dead or len(c.out) >= _HIGH_WATER else _READ
        elif phase in (_HANDSHAKE, _LINGER):
            want = _READ
        else:
            want = 0
        if c.out:
            want |= _WRITE
        mask = c.mask
        if want != mask:
            if not mask:
                self._sel.register(c.sock, want, c)
            elif not want:
                self._sel.unregister(c.sock)
            else:
                self._sel.modify(c.sock, want, c)
            c.mask = want

    def _set_deadline(self, c: _Conn, deadline: float) -> None:
        c.deadline = deadline
        if deadline < self._next_sweep:
            self._next_sweep = deadline

    # ------------------------------------------------------------------ reading and writing

    def _on_readable(self, c: _Conn) -> None:
        try:
            data = c.sock.recv(_READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # ECONNRESET and friends
            self._lost(c)
            return
        if c.phase == _LINGER:
            if not data:
                self._close(c)
            return  # discarded
        tls = c.tls
        if tls is not None:
            if c.phase == _HANDSHAKE:
                if not data:
                    self._tls_failed(c, "connection closed")
                    return
                tls.incoming.write(data)
                self._handshake(c)
                return
            if data:
                tls.incoming.write(data)
                if not self._tls_read(c):
                    return
            else:
                c.eof = True
                c.pump.receive_data(b"")
        elif data:
            c.pump.receive_data(data)
        else:
            c.eof = True
            c.pump.receive_data(b"")
        self._drive(c)

    def _on_writable(self, c: _Conn) -> None:
        out = c.out
        try:
            sent = c.sock.send(out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._lost(c)
            return
        del out[:sent]
        if not out:
            if c.started:
                c.pump.clock.output_drained()
            if c.phase == _CLOSING:
                self._linger(c)
                return
            if c.phase == _TLS_PENDING:
                self._start_tls(c)
                return
        self._update(c)

    def _send(self, c: _Conn, data: bytes) -> None:
        """Queue `data` for the peer, encrypted if TLS is on; write at once if nothing waits."""
        tls = c.tls
        if tls is not None and not c.dead:
            try:
                tls.obj.write(data)
            except (ssl.SSLError, ValueError):  # the TLS session is over (a close_notify)
                c.dead = True
                return
            data = tls.outgoing.read()
        self._send_raw(c, data)

    def _send_raw(self, c: _Conn, data: bytes) -> None:
        if not data or c.dead:
            return
        out = c.out
        if out:
            out += data
            return
        try:
            sent = c.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            c.dead = True  # the caller notices and ends the session
            return
        if sent < len(data):
            out += memoryview(data)[sent:]
            if c.started:
                c.pump.clock.output_blocked()

    def _lost(self, c: _Conn) -> None:
        """The socket broke: nothing more can be sent. End the session (the close hook runs)."""
        c.dead = True
        c.out.clear()
        if c.started:
            c.pump.clock.output_drained()
        if c.busy:
            self._update(c)  # the hook's completion drives the session to its end
        elif c.phase == _RUN:
            c.eof = True
            c.pump.connection_lost()
            self._drive(c)
        elif c.phase == _CLOSING or c.phase == _LINGER:
            self._close(c)
        else:
            self._tls_failed(c, "connection lost")

    # ------------------------------------------------------------------ TLS

    def _start_tls(self, c: _Conn) -> None:
        context = self._ssl_context
        if context is None:
            raise RuntimeError("TLS requested without an ssl_context")
        c.tls = _TLS(context)
        if c.started:  # what came behind a PROXY header belongs to the handshake
            c.tls.incoming.write(c.pump.trailing_data())
        c.phase = _HANDSHAKE
        self._handshake(c)

    def _handshake(self, c: _Conn) -> None:
        tls = c.tls
        assert tls is not None
        try:
            tls.obj.do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            self._send_raw(c, tls.outgoing.read())
            if c.dead:
                self._tls_failed(c, "connection lost")
            else:
                self._update(c)
            return
        except (ssl.SSLError, OSError, ValueError) as exc:
            self._send_raw(c, tls.outgoing.read())  # the alert, best effort
            self._tls_failed(c, str(exc))
            return
        self._send_raw(c, tls.outgoing.read())
        if c.dead:
            self._tls_failed(c, "connection lost")
            return
        c.phase = _RUN
        version = tls.obj.version()
        if c.refusal:  # refused at accept (SMTPS): now the 421 can be said
            self._send(c, c.refusal)
            c.phase = _CLOSING
            if not c.out or c.dead:
                self._linger(c)
            else:
                self._set_deadline(c, time.monotonic() + self._close_flush)
                self._update(c)
            return
        if c.started:
            c.pump.tls_started(version)
        else:
            c.pump = self.app.new_session(c.peer, tls=True, tls_version=version, slot=c.slot)
            c.started = True
        if self._tls_read(c):  # what the client sent right behind its Finished
            self._drive(c)

    def _tls_read(self, c: _Conn) -> bool:
        """Feed the pump all the plaintext in hand. False if the connection was lost."""
        tls = c.tls
        assert tls is not None
        obj = tls.obj
        pump = c.pump
        while True:
            try:
                data = obj.read(_READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                data = b""
            except (ssl.SSLError, ValueError):
                self._lost(c)
                return False
            if not data:  # close_notify
                c.eof = True
                pump.receive_data(b"")
                break
            pump.receive_data(data)
        if tls.outgoing.pending:
            self._send_raw(c, tls.outgoing.read())
        return True

    def _tls_failed(self, c: _Conn, why: str) -> None:
        """Close quietly: no reply, no traceback. A STARTTLS session still runs its close hook."""
        log.info("%r: TLS handshake failed: %s", c, why)
        if not c.started:
            self._close(c)
            return
        c.phase = _RUN
        c.tls = None
        c.dead = True
        c.out.clear()
        c.eof = True
        c.pump.abort(None, "tls failed")
        self._drive(c)

    # ------------------------------------------------------------------ timeouts

    def _sweep(self, now: float) -> None:
        nearest = _NEVER
        for c in list(self._conns):
            if c.started and c.phase in (_RUN, _TLS_PENDING, _HANDSHAKE) and not c.closed:
                c.deadline = c.pump.deadline().at  # it moves on, or stress moved it in
            deadline = c.deadline
            if deadline <= now:
                try:
                    self._expire(c)
                except Exception:
                    self._crash(c)
                if c.closed:
                    continue
                deadline = c.deadline
            if deadline < nearest:
                nearest = deadline
        if self._accept_paused_until:
            if now >= self._accept_paused_until and not self._shutting_down:
                self._resume_accepting()
            else:
                nearest = min(nearest, self._accept_paused_until)
        self._next_sweep = max(nearest, now + self._slack)

    def _expire(self, c: _Conn) -> None:
        if c.phase == _CLOSING or c.phase == _LINGER or not c.started:
            if c.phase == _HANDSHAKE:
                self._tls_failed(c, "timeout")
            else:
                self._close(c)
            return
        expiry = c.pump.deadline().expiry
        if expiry is Expiry.HOOK:
            if c.job is not None:
                self._pool.abandon(c.job)
            c.job = None
            c.busy = False
            c.ticket += 1  # its late result is dropped
            c.pump.hook_timed_out()
            self._drive(c)
        elif expiry is Expiry.UNREAD:
            log.info("%r: not reading our replies; dropped", c)
            self._lost(c)
        elif expiry is Expiry.HANDSHAKE or c.phase != _RUN:
            self._tls_failed(c, "timeout")
        else:
            self._send(c, c.pump.timeout_expired())
            self._drive(c)

    # ------------------------------------------------------------------ shutdown

    def _begin_shutdown(self) -> None:
        self._shutting_down = True
        self._lifecycle.begin_shutdown()
        self._accept_paused_until = 0.0
        self._close_listeners()
        for c in list(self._conns):
            if c.closed or c.busy or c.phase != _RUN or not c.started:
                continue
            try:
                if c.pump.idle:
                    self._send(c, c.pump.shutting_down())
                    self._drive(c)
            except Exception:
                self._crash(c)
        # The rest get their 421 in _drive() once idle, or are cut off after the grace period.

    def _cut_off(self) -> None:
        """The grace period is over: 421 and drop every connection, then run each session to
        its end without it, so that its close hook still runs (on the pool, for up to
        `CUTOFF_WAIT`). The late result of a stuck hook is dropped."""
        for c in list(self._conns):
            if c.closed:
                continue
            session = c.started and c.phase != _CLOSING and c.phase != _LINGER
            if c.job is not None:
                self._pool.abandon(c.job)  # a stuck hook must not keep the close hook waiting
                c.job = None
            try:
                if session:
                    bye = c.pump.shutting_down()  # also forgets a running hook
                    if c.phase == _RUN:
                        self._send(c, bye)
                if c.out and not c.dead:
                    c.sock.send(c.out, socket.MSG_DONTWAIT)
            except OSError:
                pass
            except Exception:
                self._crash(c)
                continue
            if not session:
                self._close(c)
                continue
            c.phase = _RUN
            c.busy = False
            c.ticket += 1
            c.dead = c.eof = True
            c.out.clear()
            with contextlib.suppress(OSError):
                c.sock.shutdown(socket.SHUT_RDWR)  # the peer sees the end now
            try:
                self._drive(c)  # the close hook: inline, or on the pool
            except Exception:
                self._crash(c)

    def _linger(self, c: _Conn) -> None:
        """All sent: shut our side down, discard what still arrives, close on the peer's EOF
        (or after `LINGER`)."""
        if c.dead or c.eof:
            self._close(c)
            return
        try:
            c.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(c)
            return
        c.phase = _LINGER
        self._set_deadline(c, time.monotonic() + LINGER)
        self._update(c)

    def _close_listeners(self) -> None:
        for listener in self._listeners:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(listener.sock)
            listener.sock.close()

    def _teardown(self) -> None:
        self._close_listeners()
        for c in list(self._conns):
            self._close(c)
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()
        # Hooks still running (stuck past the grace period) are not waited for: daemons.
        self._pool.shutdown()

    # ------------------------------------------------------------------ closing

    def _close(self, c: _Conn) -> None:
        if c.closed:
            return
        c.closed = True
        self._conns.discard(c)
        self._lifecycle.release(c.slot)
        try:
            if c.mask:
                c.mask = 0
                self._sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        finally:
            c.sock.close()

    def _crash(self, c: _Conn) -> None:
        """A bug: log it and drop this connection; the I/O thread carries on."""
        log.exception("%r: internal error in the threads transport; closing", c)
        try:
            self._close(c)
        except Exception:
            log.exception("%r: error while closing", c)
