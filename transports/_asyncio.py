"""The asyncio transport: Protocol/Transport (not streams), uvloop when installed.

Each connection is one `SessionProtocol` driving its Pump from the loop's callbacks. Plain
hooks go to the server's own thread pool; async hooks run as tasks. Reading pauses while a
hook decides, and while the peer is not reading our replies, so memory stays bounded.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar, cast, final

from ._listen import BACKLOG
from ._options import CUTOFF_WAIT, LINGER, App
from ._pump import CLOSE, NEED_DATA, START_TLS, HookCall, Mode, Pump
from ._server import Runner

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
        self.pool = concurrent.futures.ThreadPoolExecutor(
            app.options.workers, thread_name_prefix="smtpkit-worker"
        )
        self.shutting_down = False

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
            self.pool.shutdown(wait=False, cancel_futures=True)
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
        try:
            for sock in listeners:
                servers.append(
                    await loop.create_server(
                        lambda: SessionProtocol(self, False), sock=sock, backlog=BACKLOG
                    )
                )
            for sock in tls_listeners:
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
        """Deliver SIGTERM/SIGINT handlers through the loop. uvloop waits in C, where a
        plain Python signal handler would only run once some other event woke the loop."""
        if threading.current_thread() is not threading.main_thread():
            return []
        routed = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            handler = signal.getsignal(sig)
            if callable(handler) and handler is not signal.default_int_handler:
                loop.add_signal_handler(sig, handler, sig, None)
                routed.append(sig)
        return routed

    async def _shutdown(self, servers: list[asyncio.AbstractServer]) -> None:
        self.shutting_down = True
        for server in servers:
            server.close()
        for session in list(self.sessions):
            session.shutdown_if_idle()
        assert self._all_closed is not None
        if self.sessions:
            try:
                await asyncio.wait_for(self._all_closed.wait(), self.app.options.grace_period)
            except asyncio.TimeoutError:
                log.warning("grace period over; cutting off %d sessions", len(self.sessions))
                cut = list(self.sessions)
                for session in cut:
                    session.cut_off()
                # Their close hooks run on the pool: give them a moment, bounded.
                deadline = asyncio.get_running_loop().time() + CUTOFF_WAIT
                while any(s.busy for s in cut) and asyncio.get_running_loop().time() < deadline:
                    await asyncio.sleep(0.01)
        log.info("stopped")

    def session_ended(self, session: SessionProtocol) -> None:
        self.sessions.discard(session)
        if self.shutting_down and not self.sessions and self._all_closed is not None:
            self._all_closed.set()


@final
class SessionProtocol(asyncio.Protocol):
    """One SMTP session. All its state changes happen on the loop thread."""

    def __init__(self, runner: AsyncioRunner, implicit_tls: bool) -> None:
        self.runner = runner
        self.implicit_tls = implicit_tls
        self.transport: asyncio.Transport | None = None
        self.pump: Pump | None = None
        self.ip = ""
        self.busy = False  # a hook or the TLS handshake is running: don't drive, don't read
        self.lost = False
        self.closing = False
        self.reading = True
        self.write_paused = False
        self.peer_eof = False  # the peer closed its side: no lingering when we close
        self.deadline = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0  # when `timer` fires, on the monotonic clock
        self.task: asyncio.Task[None] | None = None  # an async hook or the TLS handshake

    # ------------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports quack like asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        ip, port = (str(peer[0]), int(peer[1])) if peer else ("", 0)
        app = self.runner.app
        reason = app.limits.admit(ip)
        if reason is not None or self.runner.shutting_down:
            log.info("refused [%s]:%d: %s", ip, port, reason or "shutting down")
            transport.write(app.refusal(reason or "service shutting down"))
            transport.close()
            return
        self.ip = ip
        self.runner.sessions.add(self)
        try:
            version = None
            if self.implicit_tls:
                ssl_object = transport.get_extra_info("ssl_object")
                version = ssl_object.version() if ssl_object else None
            self.pump = app.new_session((ip, port), tls=self.implicit_tls, tls_version=version)
        except Exception:
            log.exception("cannot start a session for [%s]:%d", ip, port)
            transport.abort()
            return
        self.drive()

    def data_received(self, data: bytes) -> None:
        pump = self.pump
        if pump is None or self.closing:
            return  # a lingering close discards what still arrives
        pump.receive_data(data)
        if not self.busy:
            self.drive()

    def eof_received(self) -> bool:
        if self.closing:
            return False  # lingering close: the peer read our last reply; done
        self.peer_eof = True
        if self.pump is not None:
            self.pump.receive_data(b"")
            if not self.busy:
                self.drive()
        return True  # we close when the session says so

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.cancel_timer()
        if self.pump is None:
            return
        if not self.closing:
            # No reply can reach the peer any more: end without running what it pipelined.
            self.pump.connection_lost()
            if not self.busy:
                self.drive()
        if self.ip is not None and self in self.runner.sessions:
            self.runner.app.limits.release(self.ip)
            self.runner.session_ended(self)

    def pause_writing(self) -> None:
        self.write_paused = True
        self.update_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
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
                    deadline = self.deadline = pump.read_deadline()
                    # One timer per session, re-armed lazily by on_timer(); only a deadline
                    # that moved earlier (the DATA deadline began) re-arms it here.
                    if self.timer is None:
                        if not self.lost:
                            self.arm_timer(deadline)
                    elif deadline < self.timer_at - 0.01:
                        self.timer.cancel()
                        self.arm_timer(deadline)
                    if not self.reading:
                        self.update_reading()
                    return
                if isinstance(action, HookCall):
                    self.start_hook(action)
                    return
                if action is START_TLS:
                    self.busy = True
                    self.update_reading()
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
        self.busy = True
        self.update_reading()
        loop = asyncio.get_running_loop()
        if call.mode is Mode.THREAD:
            future = loop.run_in_executor(self.runner.pool, call.fn, *call.args)
            future.add_done_callback(functools.partial(self.hook_finished, call))
        else:
            self.task = loop.create_task(self.run_async_hook(call))

    def hook_finished(self, call: HookCall, future: asyncio.Future[Any]) -> None:
        pump = self.pump
        assert pump is not None
        if future.cancelled():
            pump.hook_failed(asyncio.CancelledError(), call)
        elif (exc := future.exception()) is not None:
            pump.hook_failed(exc, call)
        else:
            pump.hook_done(future.result(), call)
        self.resume()

    async def run_async_hook(self, call: HookCall) -> None:
        pump = self.pump
        assert pump is not None
        try:
            result = await call.fn(*call.args)
        except Exception as exc:
            pump.hook_failed(exc, call)
        else:
            pump.hook_done(result, call)
        self.resume()

    def resume(self) -> None:
        self.busy = False
        if self.transport is not None:
            self.drive()

    async def start_tls(self) -> None:
        pump, transport = self.pump, self.transport
        assert pump is not None and transport is not None
        loop = asyncio.get_running_loop()
        o = self.runner.app.options
        assert o.ssl_context is not None
        try:
            new = await loop.start_tls(
                transport,
                self,
                o.ssl_context,
                server_side=True,
                ssl_handshake_timeout=o.tls_handshake_timeout,
            )
        except Exception as exc:  # a failed handshake ends only this session
            log.info("TLS handshake with [%s] failed: %s", self.ip, exc)
            self.closing = True
            self.cancel_timer()
            transport.abort()
            pump.connection_lost()
            self.busy = False
            self.finish_quietly()
            return
        if new is None:  # the connection went away during the handshake
            return
        self.transport = new
        ssl_object = new.get_extra_info("ssl_object")
        pump.tls_started(ssl_object.version() if ssl_object else None)
        self.reading = True  # a fresh transport reads by default
        self.resume()

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

    def on_timer(self) -> None:
        self.timer = None
        pump = self.pump
        if pump is None or self.lost or self.closing:
            return
        now = time.monotonic()
        if self.busy or now < self.deadline:
            # A hook is deciding (no timeout then), or the peer was active since we armed.
            self.arm_timer(now + (pump.timeout if self.busy else max(self.deadline - now, 0.05)))
            return
        out = pump.timeout_expired()
        if self.transport is not None:
            self.transport.write(out)
        self.drive()

    def arm_timer(self, at: float) -> None:
        self.timer_at = at
        delay = at - time.monotonic()
        self.timer = asyncio.get_running_loop().call_later(delay, self.on_timer)

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def close(self) -> None:
        """Close after the last reply. If the peer is still sending (pipelined input after a
        421, say), closing at once would reset the connection and could destroy that reply in
        flight; so half-close, discard what arrives, and close when the peer does (or soon)."""
        self.closing = True
        self.cancel_timer()
        transport = self.transport
        if transport is None or self.lost:
            return
        if self.peer_eof or not transport.can_write_eof():
            transport.close()
            return
        try:
            transport.write_eof()
        except OSError:  # the peer is already gone
            transport.close()
            return
        if not self.reading:
            self.reading = True
            transport.resume_reading()
        self.timer = asyncio.get_running_loop().call_later(LINGER, transport.close)

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
        end without it, so that the close hook still runs (the stuck hook's late result is
        dropped by the pump)."""
        pump = self.pump
        self.cancel_timer()
        if pump is None or self.closing:
            if self.transport is not None:
                self.transport.abort()
            return
        out = pump.shutting_down()
        if not self.lost and self.transport is not None:
            self.transport.write(out)
            self.transport.abort()
        self.busy = False
        self.finish_quietly()
