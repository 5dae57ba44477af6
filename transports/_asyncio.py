"""The asyncio transport: Protocol/Transport (not streams), uvloop when installed.

Each connection is one `SessionProtocol` driving its Pump from the loop's callbacks. Plain
hooks go to the server's own worker pool; async hooks run as tasks. Reading pauses while a
hook decides, and while the peer is not reading our replies, so memory stays bounded. Each
session has one timer, armed at the pump's deadline (see `_lifecycle`) and re-armed lazily
when it fires early; all of them are re-armed when stress begins.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from typing import ClassVar, cast, final

from ._lifecycle import Expiry, Phase, Refusal, Slot
from ._listen import BACKLOG
from ._options import LINGER, App
from ._pump import CLOSE, NEED_DATA, START_TLS, HookCall, HookOutcome, Mode, Pump
from ._server import Runner
from ._workers import Job, WorkerPool

__all__ = ["AsyncioRunner"]

log = logging.getLogger("smtpkit")


def _loop_factory(use_uvloop: bool) -> Callable[[], asyncio.AbstractEventLoop]:
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop


@final
class AsyncioRunner(Runner):
    name: ClassVar[str] = "asyncio"

    def __init__(self, app: App) -> None:
        super().__init__(app)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested = False
        self._stopping: asyncio.Event | None = None
        self.sessions: set[SessionProtocol] = set()
        self._all_closed: asyncio.Event | None = None
        self.pool = WorkerPool(app.options.workers, observer=app.observer)
        self.shutting_down = False
        self.stress_epoch = 0

    def run(
        self,
        listeners: list[socket.socket],
        tls_listeners: list[socket.socket],
        ready: Callable[[], None],
    ) -> None:
        loop = _loop_factory(self.app.options.uvloop)()
        try:
            loop.run_until_complete(self._main(listeners, tls_listeners, ready))
        finally:
            self.pool.shutdown()  # stuck hooks are not waited for: daemon threads
            loop.close()

    def stop(self) -> None:
        # Thread-safe, and safe from a signal handler running in the loop's thread.
        self._stop_requested = True
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(stopping.set)

    async def _main(
        self,
        listeners: list[socket.socket],
        tls_listeners: list[socket.socket],
        ready: Callable[[], None],
    ) -> None:
        loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._all_closed = asyncio.Event()
        self._loop = loop
        o = self.app.options
        servers: list[asyncio.AbstractServer] = []
        proxied = self.app.proxied
        try:
            for sock in listeners:
                proxy = proxied(sock.getsockname())
                servers.append(
                    await loop.create_server(
                        functools.partial(SessionProtocol, self, False, proxy),
                        sock=sock,
                        backlog=BACKLOG,
                    )
                )
            for sock in tls_listeners:
                if proxied(sock.getsockname()):  # the PROXY header comes before the handshake
                    servers.append(
                        await loop.create_server(
                            lambda: SessionProtocol(self, True, True), sock=sock, backlog=BACKLOG
                        )
                    )
                    continue
                servers.append(
                    await loop.create_server(
                        lambda: SessionProtocol(self, True),
                        sock=sock,
                        backlog=BACKLOG,
                        ssl=o.ssl_context,
                        ssl_handshake_timeout=o.tls_handshake_timeout,
                    )
                )
        except BaseException:
            for server in servers:
                server.close()
            for sock in (*listeners, *tls_listeners):
                sock.close()
            raise
        routed = self._route_signals(loop)
        ready()
        try:
            if not self._stop_requested:
                await self._stopping.wait()
            await self._shutdown(servers)
        finally:
            for sig in routed:
                loop.remove_signal_handler(sig)

    @staticmethod
    def _route_signals(loop: asyncio.AbstractEventLoop) -> list[signal.Signals]:
        """Deliver SIGTERM/SIGINT (and SIGHUP: reload) handlers through the loop. uvloop
        waits in C, where a plain Python signal handler would only run once some other event
        woke the loop."""
        if threading.current_thread() is not threading.main_thread():
            return []
        routed = []
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            handler = signal.getsignal(sig)
            if callable(handler) and handler is not signal.default_int_handler:
                loop.add_signal_handler(sig, handler, sig, None)
                routed.append(sig)
        return routed

    async def _shutdown(self, servers: list[asyncio.AbstractServer]) -> None:
        lifecycle = self.app.lifecycle
        self.shutting_down = True
        lifecycle.begin_shutdown()
        for server in servers:
            server.close()
        for session in list(self.sessions):
            session.shutdown_if_idle()
        assert self._all_closed is not None
        cut: list[SessionProtocol] = []
        while True:
            # Cut-off sessions are gone from `sessions` at once; their close hooks still run.
            left = len(self.sessions) + sum(1 for s in cut if s.busy)
            phase = lifecycle.advance(left)
            if phase is Phase.STOPPED:
                break
            if phase is Phase.DRAINING:
                wait = max(lifecycle.phase_ends - time.monotonic(), 0.0)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._all_closed.wait(), wait)
            elif not cut:
                cut = list(self.sessions)
                for session in cut:
                    session.cut_off()
            else:
                await asyncio.sleep(0.01)  # for the close hooks, up to CUTOFF_WAIT
        log.info("stopped")

    def session_ended(self, session: SessionProtocol) -> None:
        self.sessions.discard(session)
        if self.shutting_down and not self.sessions and self._all_closed is not None:
            self._all_closed.set()

    def admitted(self) -> None:
        """A slot was taken: when stress began, every running deadline may be shorter now."""
        epoch = self.app.lifecycle.stress_epoch
        if epoch != self.stress_epoch:
            self.stress_epoch = epoch
            for session in self.sessions:
                session.rearm()


@final
class SessionProtocol(asyncio.Protocol):
    """One SMTP session. All its state changes happen on the loop thread."""

    def __init__(self, runner: AsyncioRunner, implicit_tls: bool, proxy: bool = False) -> None:
        self.runner = runner
        self.implicit_tls = implicit_tls
        #: A PROXY header comes first (on an implicit-TLS listener: before the handshake).
        self.proxy = proxy
        self.transport: asyncio.Transport | None = None
        self.pump: Pump | None = None
        self.ip = ""
        self.slot: Slot | None = None
        self.busy = False  # a hook or the TLS handshake is running: don't drive, don't read
        self.handshaking = False  # STARTTLS: what arrives now is for after tls_started()
        self.early: list[bytes] = []  # bytes that came with the client's TLS Finished
        self.lost = False
        self.closing = False
        self.reading = True
        self.write_paused = False
        self.peer_eof = False  # the peer closed its side: no lingering when we close
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0  # when `timer` fires, on the monotonic clock
        self.task: asyncio.Task[None] | None = None  # an async hook or the TLS handshake
        self.job: Job[HookOutcome] | None = None  # a plain hook on the pool
        self.call: HookCall | None = None  # the hook running now
        self.cancelling = False  # we cancel `task` ourselves (a hook timeout, a cut-off)

    # ------------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports quack like asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        ip, port = (str(peer[0]), int(peer[1])) if peer else ("", 0)
        runner = self.runner
        app = runner.app
        slot = app.lifecycle.admit(ip)
        if isinstance(slot, Refusal):
            log.info("refused [%s]:%d: %s", ip, port, slot.value)
            self.closing = True
            transport.write(app.refusal(slot))
            transport.close()
            self.timer = asyncio.get_running_loop().call_later(LINGER, transport.abort)
            return
        self.ip = ip
        self.slot = slot
        runner.sessions.add(self)
        runner.admitted()
        try:
            version = None
            if self.implicit_tls and not self.proxy:
                ssl_object = transport.get_extra_info("ssl_object")
                version = ssl_object.version() if ssl_object else None
            self.pump = app.new_session(
                (ip, port), tls=self.implicit_tls, tls_version=version, proxy=self.proxy, slot=slot
            )
        except Exception:
            log.exception("cannot start a session for [%s]:%d", ip, port)
            transport.abort()
            return
        self.drive()

    def data_received(self, data: bytes) -> None:
        pump = self.pump
        if pump is None or self.closing:
            return  # a lingering close discards what still arrives
        if self.handshaking:
            # The new TLS transport delivers what came with the client's Finished before
            # start_tls() returns: the engine must hear tls_started() first.
            self.early.append(data)
            return
        pump.receive_data(data)
        if not self.busy:
            self.drive()

    def eof_received(self) -> bool:
        if self.closing:
            return False  # lingering close: the peer read our last reply; done
        self.peer_eof = True
        if self.pump is not None and not self.handshaking:
            self.pump.receive_data(b"")
            if not self.busy:
                self.drive()
        return True  # we close when the session says so

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.cancel_timer()
        self.runner.app.lifecycle.release(self.slot)  # first: the client may reconnect now
        if self.pump is None:
            return
        if not self.closing:
            # No reply can reach the peer any more: end without running what it pipelined.
            self.pump.connection_lost()
            if not self.busy:
                self.drive()
        self.runner.session_ended(self)

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.pump is not None:
            self.pump.clock.output_blocked()
            self.rearm()
        self.update_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.pump is not None:
            self.pump.clock.output_drained()
        self.update_reading()

    # ------------------------------------------------------------------ the pump loop

    def drive(self) -> None:
        pump = self.pump
        transport = self.transport
        assert pump is not None and transport is not None
        try:
            while True:
                action = pump.next_action()
                out = pump.data_to_send()
                if out and not self.lost:
                    transport.write(out)
                if action is NEED_DATA:
                    if self.runner.shutting_down and pump.idle:
                        out = pump.shutting_down()
                        if not self.lost:
                            transport.write(out)
                        continue
                    self.rearm()
                    if not self.reading:
                        self.update_reading()
                    return
                if isinstance(action, HookCall):
                    self.start_hook(action)
                    return
                if action is START_TLS:
                    self.busy = True
                    self.update_reading()
                    self.rearm()
                    self.task = asyncio.get_running_loop().create_task(self.start_tls())
                    return
                if action is CLOSE:
                    self.close()
                    return
        except Exception:
            log.exception("session with [%s] failed", self.ip)
            self.closing = True
            self.cancel_timer()
            transport.abort()

    def start_hook(self, call: HookCall) -> None:
        pump = self.pump
        assert pump is not None
        loop = asyncio.get_running_loop()
        if call.mode is Mode.THREAD:

            def report(ok: bool, result: HookOutcome | BaseException) -> None:
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                    loop.call_soon_threadsafe(self.thread_hook_finished, call, ok, result)

            self.job = self.runner.pool.submit(call.fn, call.args, report)
            if self.job is None:
                pump.hook_unavailable(call)
                self.drive()
                return
        else:
            self.task = loop.create_task(self.run_async_hook(call))
        self.call = call
        self.busy = True
        self.update_reading()
        self.rearm()

    def thread_hook_finished(
        self, call: HookCall, ok: bool, result: HookOutcome | BaseException
    ) -> None:
        pump = self.pump
        assert pump is not None
        if call is not self.call:
            return  # given up on (timed out, cut off): the pump dropped it already
        if not ok:
            assert isinstance(result, BaseException)
            pump.hook_failed(result, call)
        else:
            assert not isinstance(result, BaseException)
            pump.hook_done(result, call)  # type: ignore[arg-type]  # THREAD: not async
        self.resume()

    async def run_async_hook(self, call: HookCall) -> None:
        pump = self.pump
        assert pump is not None
        try:
            result = await cast(Awaitable[object], call.fn(*call.args))
        except asyncio.CancelledError as exc:
            if self.cancelling:
                raise  # ours: a hook timeout or a cut-off, answered already
            pump.hook_failed(exc, call)
        except BaseException as exc:  # a hook's SystemExit is the hook's failure
            pump.hook_failed(exc, call)
        else:
            pump.hook_done(result, call)  # type: ignore[arg-type]
        if call is self.call:
            self.resume()

    def resume(self) -> None:
        self.busy = False
        self.call = None
        self.job = None
        self.task = None
        if self.transport is not None:
            self.drive()

    def give_up_hook(self) -> None:
        """Stop waiting for the running hook: abandon its thread or cancel its task. Its late
        result, if any, is dropped."""
        if self.job is not None:
            self.runner.pool.abandon(self.job)
        elif self.task is not None and not self.task.done():
            self.cancelling = True
            self.task.cancel()
        self.call = None
        self.job = None
        self.task = None

    async def start_tls(self) -> None:
        pump, transport = self.pump, self.transport
        assert pump is not None and transport is not None
        loop = asyncio.get_running_loop()
        o = self.runner.app.options
        assert o.ssl_context is not None
        self.handshaking = True
        trailing = pump.trailing_data()
        if trailing:  # came behind a PROXY header: the handshake's first bytes
            loop.call_soon(self.feed_handshake, transport, trailing)
        try:
            new = await loop.start_tls(
                transport,
                self,
                o.ssl_context,
                server_side=True,
                ssl_handshake_timeout=self.runner.app.lifecycle.peer_timeout(
                    o.tls_handshake_timeout
                ),
            )
        except Exception as exc:  # a failed handshake ends only this session
            log.info("TLS handshake with [%s] failed: %s", self.ip, exc)
            self.handshaking = False
            self.closing = True
            self.cancel_timer()
            transport.abort()
            pump.connection_lost()
            self.busy = False
            self.finish_quietly()
            return
        self.handshaking = False
        if new is None:  # the connection went away during the handshake
            return
        self.transport = new
        ssl_object = new.get_extra_info("ssl_object")
        pump.tls_started(ssl_object.version() if ssl_object else None)
        early, self.early = self.early, []
        for data in early:  # after tls_started(): the first command may ride with Finished
            pump.receive_data(data)
        if self.peer_eof:
            pump.receive_data(b"")
        self.reading = True  # a fresh transport reads by default
        self.task = None
        self.resume()

    @staticmethod
    def feed_handshake(transport: asyncio.Transport, data: bytes) -> None:
        """Hand `data`, read before the handshake began, to the TLS protocol that start_tls()
        just put on `transport` (scheduled before start_tls() runs, so it comes first: the
        protocol buffers it until its connection_made() starts the handshake). It is given as
        the transport would give it: asyncio's and uvloop's TLS protocols are buffered."""
        protocol = cast(asyncio.BufferedProtocol, transport.get_protocol())
        if isinstance(protocol, SessionProtocol) or not hasattr(protocol, "buffer_updated"):
            log.error("cannot hand the TLS handshake its first bytes; dropping the connection")
            transport.abort()
            return
        view = memoryview(data)
        while view:
            buffer = memoryview(protocol.get_buffer(len(view)))
            size = min(len(buffer), len(view))
            buffer[:size] = view[:size]
            protocol.buffer_updated(size)
            view = view[size:]

    def finish_quietly(self) -> None:
        """Run the session to its end (so the close hook runs) without a live transport."""
        self.lost = True
        self.drive()

    # ------------------------------------------------------------------ flow control

    def update_reading(self) -> None:
        transport = self.transport
        if transport is None or self.lost or self.closing:
            return
        want = not self.busy and not self.write_paused
        if want != self.reading:
            self.reading = want
            if want:
                transport.resume_reading()
            else:
                transport.pause_reading()

    def rearm(self) -> None:
        """Arm the timer at the pump's deadline, unless it is armed earlier already (then it
        re-arms itself when it fires)."""
        pump = self.pump
        if pump is None or self.lost or self.closing:
            return
        at = pump.deadline().at
        if self.timer is not None:
            if at >= self.timer_at - 0.01:
                return
            self.timer.cancel()
        self.arm_timer(at)

    def on_timer(self) -> None:
        self.timer = None
        pump = self.pump
        if pump is None or self.lost or self.closing:
            return
        deadline = pump.deadline()
        now = time.monotonic()
        if now < deadline.at:  # it moved on since we armed
            self.arm_timer(deadline.at)
            return
        expiry = deadline.expiry
        if expiry is Expiry.HOOK:
            call = self.call
            if call is None:  # the hook ended in this very iteration
                return
            self.give_up_hook()
            pump.hook_timed_out(call)
            self.resume()
        elif expiry is Expiry.UNREAD or expiry is Expiry.HANDSHAKE:
            why = "not reading our replies" if expiry is Expiry.UNREAD else "TLS handshake timeout"
            log.info("[%s]: %s; dropped", self.ip, why)
            if self.transport is not None:
                self.transport.abort()  # connection_lost() ends the session
        else:
            out = pump.timeout_expired()
            if self.transport is not None:
                self.transport.write(out)
            if not self.busy:
                self.drive()

    def arm_timer(self, at: float) -> None:
        self.timer_at = at
        if at == float("inf"):
            return
        delay = at - time.monotonic()
        self.timer = asyncio.get_running_loop().call_later(delay, self.on_timer)

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def close(self) -> None:
        """Close after the last reply. If the peer is still sending (pipelined input after a
        421, say), closing at once would reset the connection and could destroy that reply in
        flight; so half-close, discard what arrives, and close when the peer does. Whatever
        happens, the connection is aborted `LINGER` seconds later: a peer that reads nothing
        must not keep it (and its slot) with our output queued forever."""
        self.closing = True
        self.cancel_timer()
        transport = self.transport
        if transport is None or self.lost:
            return
        self.timer = asyncio.get_running_loop().call_later(LINGER, transport.abort)
        if not self.reading:  # the close (a TLS close_notify exchange) needs reading
            self.reading = True
            transport.resume_reading()
        if self.peer_eof or not transport.can_write_eof():
            transport.close()
            return
        try:
            transport.write_eof()
        except OSError:  # the peer is already gone
            transport.close()

    # ------------------------------------------------------------------ shutdown

    def shutdown_if_idle(self) -> None:
        pump = self.pump
        if pump is None or self.closing or self.lost:
            return
        if pump.idle and not self.busy:
            if self.transport is not None:
                self.transport.write(pump.shutting_down())
            self.drive()

    def cut_off(self) -> None:
        """The grace period is over: 421, drop the connection, then run the session to its
        end without it, so that the close hook still runs (the stuck hook is given up on)."""
        pump = self.pump
        self.cancel_timer()
        if pump is None or self.closing:
            if self.transport is not None:
                self.transport.abort()
            return
        if self.call is not None:
            self.give_up_hook()
        out = pump.shutting_down()
        if not self.lost and self.transport is not None:
            self.transport.write(out)
            self.transport.abort()
        self.busy = False
        self.finish_quietly()
