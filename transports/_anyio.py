"""The anyio transport: one code path for anyio's asyncio backend and for trio.

One task per connection runs the pump loop (see `_pump`) over an anyio `ByteStream`:

- The stream is our own, not anyio's: anyio's `SocketStream` on the asyncio backend (4.16)
  keeps its transport reading into an unbounded queue until a `receive()` first has to wait,
  so a client that pipelines from the start and never reads our replies could grow it
  without limit. On trio it is `_SocketStream`: non-blocking socket calls,
  `anyio.wait_readable()` and `anyio.wait_writable()`, so the kernel's buffers are the only
  ones. On asyncio it is `_LoopStream`, the loop's own transport with explicit flow control:
  the socket stays registered instead of costing `wait_readable()` two `epoll_ctl` calls per
  read, and reading pauses whenever bytes arrive that no `receive()` waits for, so it holds
  at most one read. Both send without the extra yield anyio's `send()` makes, and return
  only once the kernel took every byte. The session loop above them is the same.
- The listeners accept in batches.
- Timeouts cost nothing per read. Each session runs its loop inside one long-lived cancel
  scope, and a single watchdog task asks each session waiting on its peer for the pump's
  deadline (see `_lifecycle`; on `time.monotonic`, which trio's clock is not) and cancels the
  scopes of those past it. Timeouts therefore fire up to `_resolution()` late, and stress
  shortens the running ones at the next tick.
- Plain hooks run on the server's own `WorkerPool` (daemon threads, a stuck one abandoned at
  its deadline), never on anyio's process-wide default; async hooks are awaited in the
  connection task, inside a cancel scope at the hook deadline.
- STARTTLS and implicit TLS use anyio's `TLSStream` over our stream; the handshake is bounded
  by `options.tls_handshake_timeout`.
- `stop()` writes one byte to a socketpair that the serving task waits on: safe from any
  thread and from a signal handler, on both backends.

Backpressure comes from the loop's shape: it reads only when the pump says NEED_DATA (never
while a hook decides), and `await stream.send()` waits while the peer is not reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib.util
import logging
import math
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Final, cast, final

import anyio
import anyio.from_thread
import anyio.lowlevel
from anyio.abc import ByteStream, TaskGroup
from anyio.streams.tls import TLSAttribute, TLSStream

from smtp_core import Reply

from ._lifecycle import CUTOFF_WAIT, Phase, Refusal, Slot
from ._options import App, ServerOptions
from ._pump import CLOSE, NEED_DATA, START_TLS, HookCall, HookOutcome, Mode, Pump
from ._server import Runner
from ._workers import WorkerPool

__all__ = ["AnyioRunner"]

log = logging.getLogger("smtpkit")

#: Bytes asked for per read.
READ_SIZE: Final = 65536
#: How long to back off when accept() runs out of file descriptors or memory.
ACCEPT_BACKOFF: Final = 0.1
#: Connections accepted per wake-up of a listener, before other tasks get a turn.
ACCEPT_BATCH: Final = 64
_ACCEPT_RESOURCE_ERRORS: Final = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
)
#: What a dead or misbehaving peer makes stream calls raise (ssl.SSLError is an OSError).
_IO_ERRORS: Final = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)
_TLS_FAILED: Final = Reply(code=421, text=("TLS handshake failed",), enhanced="4.7.0")

# What a session waits on, as the watchdog and the shutdown see it.
_BUSY: Final = 0  # running the pump or a hook: never interrupted
_WRITING: Final = 1  # flushing replies: a timeout here means the peer stopped reading
_READING: Final = 2  # waiting for the peer: a timeout, or a shutdown when idle

# Why a session's loop was interrupted.
_TIMEOUT: Final = "timeout"
_WRITE_TIMEOUT: Final = "write timeout"
_SHUTDOWN: Final = "shutdown"


def _use_uvloop(wanted: bool) -> bool:
    if not wanted:
        return False
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def _resolution(options: ServerOptions) -> float:
    """How often the watchdog looks for sessions past their deadline."""
    return min(1.0, options.timeout / 10, options.data_timeout / 10, options.stress_timeout / 10)


@final
class _SocketStream(ByteStream):
    """A connected non-blocking socket as an anyio ByteStream: the trio backend's stream.
    It works on any backend; on asyncio, `_LoopStream` does the same for less.

    Nothing is read ahead: bytes wait in the kernel until `receive()` asks for them. Each
    `receive()` waits for readiness first, so it is always a checkpoint (cancellation, and
    fairness among sessions); `send()` yields only when the kernel's buffer is full.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    async def receive(self, max_bytes: int = READ_SIZE) -> bytes:
        sock = self._sock
        while True:
            await anyio.wait_readable(sock)
            try:
                data = sock.recv(max_bytes)
            except BlockingIOError:  # a spurious wake-up
                continue
            except OSError as exc:
                raise anyio.BrokenResourceError from exc
            if not data:
                raise anyio.EndOfStream
            return data

    async def send(self, item: bytes) -> None:
        sock = self._sock
        try:
            sent = sock.send(item)  # most often the kernel takes it all: no yield
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise anyio.BrokenResourceError from exc
        if sent == len(item):
            return
        view = memoryview(item)[sent:]
        while view:
            await anyio.wait_writable(sock)
            try:
                sent = sock.send(view)
            except BlockingIOError:
                continue
            except OSError as exc:
                raise anyio.BrokenResourceError from exc
            view = view[sent:]

    async def send_eof(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            raise anyio.BrokenResourceError from exc

    async def aclose(self) -> None:
        self._sock.close()


@final
class _Prefixed(ByteStream):
    """A stream whose first bytes were read already: what came behind a PROXY header on an
    implicit-TLS listener, the start of the TLS handshake. `receive()` gives them first."""

    def __init__(self, stream: ByteStream, first: bytes) -> None:
        self._stream = stream
        self._first = first

    async def receive(self, max_bytes: int = READ_SIZE) -> bytes:
        if self._first:
            data, self._first = self._first[:max_bytes], self._first[max_bytes:]
            return data
        return await self._stream.receive(max_bytes)

    async def send(self, item: bytes) -> None:
        await self._stream.send(item)

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()


@final
class _LoopStream(ByteStream, asyncio.Protocol):
    """The asyncio backend's stream: the accepted socket adopted by the loop's own transport
    (`loop.connect_accepted_socket()`), with this object as its protocol.

    `_SocketStream` works on asyncio too, but there each `wait_readable()` registers a reader
    and removes it again (two `epoll_ctl` calls, a handle, a future): that made a command
    round trip cost nearly twice what it costs on the asyncio transport. Here the socket stays
    registered, and a read hands its bytes straight to the waiting `receive()`.

    It reads ahead no more than `_SocketStream` does, give or take one read: when bytes arrive
    and no `receive()` waits for them (a hook is deciding, or `send()` waits on a peer that
    does not read), reading pauses, so at most one read of the transport (256 KiB) is held
    here and the rest waits in the kernel. Reading resumes when a `receive()` has to wait. A
    client in lockstep never pauses us: our `receive()` is already waiting when its next
    command arrives. `send()` returns once the kernel took every byte (the transport's write
    buffer limit is 0), as `_SocketStream.send()` does.
    """

    __slots__ = (
        "_buffer",
        "_closed",
        "_drain",
        "_eof",
        "_error",
        "_loop",
        "_paused",
        "_transport",
        "_waiter",
        "_write_paused",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._buffer = b""  # read, and not received yet
        self._waiter: asyncio.Future[None] | None = None  # of the receive() that waits
        self._drain: asyncio.Future[None] | None = None  # of the send() that waits
        self._paused = False  # reading is paused
        self._write_paused = False  # the transport holds bytes that the kernel did not take
        self._eof = False
        self._error: BaseException | None = None  # the connection is gone: why
        self._closed = False

    @classmethod
    async def adopt(cls, sock: socket.socket) -> _LoopStream:
        loop = asyncio.get_running_loop()
        _, stream = await loop.connect_accepted_socket(lambda: cls(loop), sock)
        return stream

    # ------------------------------------------------------------------ the protocol side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports quack like asyncio.Transport without subclassing it.
        self._transport = transport = cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(high=0)  # pause_writing() at the first byte held

    def data_received(self, data: bytes) -> None:
        self._buffer = self._buffer + data if self._buffer else data
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        elif not self._paused and self._transport is not None:
            self._paused = True  # nobody waits for these bytes: leave the rest in the kernel
            self._transport.pause_reading()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return True  # keep the transport open: replies may still have to go out

    def connection_lost(self, exc: Exception | None) -> None:
        if self._error is None:
            self._error = exc if exc is not None else anyio.BrokenResourceError()
        self._wake()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake()

    def _wake(self) -> None:
        for future in (self._waiter, self._drain):
            if future is not None and not future.done():
                future.set_result(None)

    # ------------------------------------------------------------------ the stream side

    async def receive(self, max_bytes: int = READ_SIZE) -> bytes:
        data = self._buffer
        if data:
            await asyncio.sleep(0)  # a checkpoint, as every receive() is on the other path
            data = self._buffer
        while not data:
            if self._closed:
                raise anyio.ClosedResourceError
            if self._eof:
                raise anyio.EndOfStream
            if self._error is not None:
                raise anyio.BrokenResourceError from self._error
            if self._paused:
                self._paused = False
                assert self._transport is not None
                self._transport.resume_reading()
            waiter = self._waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None
            data = self._buffer
        if len(data) <= max_bytes:
            self._buffer = b""
            return data
        self._buffer = data[max_bytes:]
        return data[:max_bytes]

    async def send(self, item: bytes) -> None:
        transport = self._transport
        assert transport is not None
        if self._closed:
            raise anyio.ClosedResourceError
        if self._error is not None or transport.is_closing():
            raise anyio.BrokenResourceError from self._error
        try:
            transport.write(item)  # most often the kernel takes it all: no yield
        except RuntimeError as exc:  # after send_eof()
            raise anyio.ClosedResourceError from exc
        while self._write_paused and not transport.is_closing():
            drain = self._drain = self._loop.create_future()
            try:
                await drain
            finally:
                self._drain = None
        if transport.is_closing():  # a write failed (the transport saw it) or aclose()
            if self._closed:
                raise anyio.ClosedResourceError
            raise anyio.BrokenResourceError from self._error

    async def send_eof(self) -> None:
        assert self._transport is not None
        try:
            self._transport.write_eof()
        except (OSError, RuntimeError) as exc:
            raise anyio.BrokenResourceError from exc

    async def aclose(self) -> None:
        # abort(), not close(): close at once, like the socket's close() on the other path,
        # even if a cancelled send() left bytes that the peer never read.
        self._closed = True
        if self._transport is not None:
            self._transport.abort()
        self._wake()


@final
class AnyioRunner(Runner):
    name: ClassVar[str] = "anyio"

    def __init__(self, app: App) -> None:
        super().__init__(app)
        # The self-pipe that stop() writes to: thread-safe and signal-safe on any backend.
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stop_requested = False
        #: True once shutdown began: idle sessions get 421 instead of another read.
        self.stopping = False
        self.sessions: set[_Session] = set()
        self.pool = WorkerPool(app.options.workers, observer=app.observer)
        self._all_done: anyio.Event | None = None

    @classmethod
    def check(cls, app: App) -> None:
        backend = app.options.anyio_backend
        if backend == "trio" and importlib.util.find_spec("trio") is None:
            raise ValueError("the trio backend needs trio: pip install 'smtpkit[trio]'")

    def run(
        self,
        listeners: list[socket.socket],
        tls_listeners: list[socket.socket],
        ready: Callable[[], None],
    ) -> None:
        o = self.app.options
        options: dict[str, Any] = {}
        if o.anyio_backend == "asyncio" and _use_uvloop(o.uvloop):
            options["use_uvloop"] = True
        try:
            anyio.run(
                self._main,
                listeners,
                tls_listeners,
                ready,
                backend=o.anyio_backend,
                backend_options=options,
            )
        finally:
            for sock in (*listeners, *tls_listeners, self._wake_r, self._wake_w):
                sock.close()
            self.pool.shutdown()  # stuck hooks are not waited for: daemon threads

    def stop(self) -> None:
        # A flag and a byte on a socket: safe from any thread and inside a signal handler.
        self._stop_requested = True
        with contextlib.suppress(OSError):  # already woken (buffer full), or run() ended
            self._wake_w.send(b"\0")

    # ------------------------------------------------------------------ serving

    async def _main(
        self,
        listeners: list[socket.socket],
        tls_listeners: list[socket.socket],
        ready: Callable[[], None],
    ) -> None:
        self._all_done = anyio.Event()
        async with anyio.create_task_group() as sessions:
            sessions.start_soon(self._watchdog)
            try:
                async with anyio.create_task_group() as acceptors:
                    for sock in listeners:
                        proxy = self.app.proxied(sock.getsockname())
                        acceptors.start_soon(self._accept_loop, sock, False, sessions, proxy)
                    for sock in tls_listeners:
                        proxy = self.app.proxied(sock.getsockname())
                        acceptors.start_soon(self._accept_loop, sock, True, sessions, proxy)
                    ready()
                    await self._wait_for_stop()
                    acceptors.cancel_scope.cancel()
            finally:
                for sock in (*listeners, *tls_listeners):
                    sock.close()  # stop accepting: new clients are refused by the kernel
            await self._shutdown()
            # Stopped: the watchdog, and whatever the cut-off wait did not see end, go.
            sessions.cancel_scope.cancel()
        log.info("stopped")

    async def _wait_for_stop(self) -> None:
        while not self._stop_requested:
            await anyio.wait_readable(self._wake_r)
            with contextlib.suppress(BlockingIOError):
                self._wake_r.recv(64)

    async def _accept_loop(
        self, sock: socket.socket, implicit_tls: bool, sessions: TaskGroup, proxy: bool
    ) -> None:
        while True:
            for _ in range(ACCEPT_BATCH):  # take what is queued, then wait for more
                try:
                    conn, addr = sock.accept()
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno in _ACCEPT_RESOURCE_ERRORS:
                        log.warning("accept failed: %s", exc)
                        await anyio.sleep(ACCEPT_BACKOFF)
                    else:  # the client gave up before we got to it (ECONNABORTED ...)
                        log.debug("accept failed: %s", exc)
                    continue
                sessions.start_soon(self._connection, conn, addr, implicit_tls, proxy)
            else:  # a full batch: let the sessions run before accepting more
                await anyio.lowlevel.checkpoint()
                continue
            await anyio.wait_readable(sock)

    async def _watchdog(self) -> None:
        """Interrupt the sessions whose peer is past its deadline (see the module docstring)."""
        resolution = _resolution(self.app.options)
        sessions = self.sessions
        while True:
            await anyio.sleep(resolution)
            now = time.monotonic()
            for session in sessions:  # no await in this loop: the set cannot change
                pump = session.pump
                if session.waiting and pump is not None and pump.deadline().at <= now:
                    reason = _WRITE_TIMEOUT if session.waiting == _WRITING else _TIMEOUT
                    session.interrupt(reason)

    async def _shutdown(self) -> None:
        self.stopping = True
        lifecycle = self.app.lifecycle
        lifecycle.begin_shutdown()
        for session in self.sessions:
            pump = session.pump
            if session.waiting == _READING and pump is not None and pump.idle:
                session.interrupt(_SHUTDOWN)
        # The others say 421 when they next become idle, or are cut off after the grace period.
        # Ask the lifecycle until it says STOPPED: a timer may wake us a little before the
        # phase ends (uvloop's clock ticks in cached milliseconds), and then it is not over.
        all_done = self._all_done
        assert all_done is not None
        cut = False
        while (phase := lifecycle.advance(len(self.sessions))) is not Phase.STOPPED:
            if phase is Phase.CUTTING_OFF and not cut:
                cut = True
                for session in self.sessions:  # each has CUTOFF_WAIT for its 421, close hook
                    session.scope.cancel()
            with anyio.move_on_after(max(lifecycle.phase_ends - time.monotonic(), 0.0)):
                await all_done.wait()

    async def _connection(
        self, conn: socket.socket, addr: Any, implicit_tls: bool, proxy: bool
    ) -> None:
        """The connection task: admission, the session, and cleanup whatever happens."""
        ip, port = str(addr[0]), int(addr[1])  # an IPv6 4-tuple too
        try:
            conn.setblocking(False)
            if conn.family in (socket.AF_INET, socket.AF_INET6):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # reset already
            conn.close()
            return
        stream: ByteStream
        if self.app.options.anyio_backend == "asyncio":
            try:
                stream = await _LoopStream.adopt(conn)
            except OSError:
                conn.close()
                return
        else:
            stream = _SocketStream(conn)
        session = _Session(self, stream, ip, port, implicit_tls, proxy)
        self.sessions.add(session)
        try:
            with session.scope:
                await session.run()
            if session.scope.cancelled_caught:
                with anyio.move_on_after(CUTOFF_WAIT, shield=True):
                    await session.cut_off()
        except Exception:
            log.exception("session with %s failed", session.peer_text)
        finally:
            # Free the slot first, so that a client that sees our EOF may connect again.
            self.app.lifecycle.release(session.slot)
            self.sessions.discard(session)
            if self.stopping and not self.sessions and self._all_done is not None:
                self._all_done.set()
            try:
                await anyio.aclose_forcefully(session.stream)
            except Exception:  # closing must never fail the server
                log.debug("closing %s", session.peer_text, exc_info=True)


@final
class _Session:
    """One SMTP connection, driven by one task. Everything here runs on the loop thread."""

    __slots__ = (
        "implicit_tls",
        "interrupted",
        "ip",
        "lost",
        "peer_text",
        "port",
        "proxy",
        "pump",
        "runner",
        "scope",
        "slot",
        "stream",
        "timer",
        "waiting",
    )

    def __init__(
        self,
        runner: AnyioRunner,
        stream: ByteStream,
        ip: str,
        port: int,
        implicit_tls: bool,
        proxy: bool = False,
    ) -> None:
        self.runner = runner
        #: A PROXY header opens the connection (before the TLS handshake, with implicit TLS).
        self.proxy = proxy
        self.stream: ByteStream = stream
        self.ip = ip
        self.port = port
        self.peer_text = f"[{ip}]:{port}"
        self.implicit_tls = implicit_tls
        self.pump: Pump | None = None
        self.slot: Slot | None = None
        #: The connection can no longer carry bytes: write nothing more, read nothing more.
        self.lost = False
        #: Cancelled to cut the session off once the grace period is over.
        self.scope = anyio.CancelScope()
        #: Around the pump loop; cancelled by `interrupt()`.
        self.timer = anyio.CancelScope()
        #: _BUSY, _WRITING or _READING: what the watchdog may interrupt.
        self.waiting = _BUSY
        #: Why `timer` was cancelled, once it was.
        self.interrupted: str | None = None

    def interrupt(self, reason: str) -> None:
        """Stop the session's wait on its peer (a timeout, or a shutdown while idle)."""
        if self.interrupted is None:
            self.interrupted = reason
            self.timer.cancel()

    # ------------------------------------------------------------------ the pump loop

    async def run(self) -> None:
        runner = self.runner
        app = runner.app
        slot = app.lifecycle.admit(self.ip)
        if not isinstance(slot, Refusal):
            self.slot = slot
        tls_first = self.implicit_tls and not self.proxy  # else the PROXY header comes first
        if tls_first and not await self.handshake():
            return
        if isinstance(slot, Refusal):
            log.info("refused %s: %s", self.peer_text, slot.value)
            await self.say(app.refusal(slot))
            return
        pump = self.pump = app.new_session(
            (self.ip, self.port), tls=self.implicit_tls, proxy=self.proxy, slot=self.slot
        )
        if tls_first:
            pump.session.tls_version = self.stream.extra(TLSAttribute.tls_version, None)
        unsent = b""
        with self.timer:
            unsent = await self.drive(pump)
        self.waiting = _BUSY
        reason = self.interrupted
        if reason is None:
            return
        if reason == _WRITE_TIMEOUT:  # the peer stopped reading: nothing more can be said
            self.lost = True
            pump.timeout_expired()
        elif reason == _SHUTDOWN:
            await self.say(unsent + pump.shutting_down())
        else:
            await self.say(unsent + pump.timeout_expired())
        await self.finish(pump)

    async def drive(self, pump: Pump) -> bytes:
        """The pump loop, until CLOSE (returns b"") or an interruption (returns the output
        that is still to be sent)."""
        runner = self.runner
        while True:
            action = pump.next_action()
            out = pump.data_to_send()
            if action is NEED_DATA:
                if runner.stopping and pump.idle:
                    self.interrupted = _SHUTDOWN
                    return out
                if self.lost:
                    pump.receive_data(b"")
                    continue
                try:
                    if out:
                        self.waiting = _WRITING
                        pump.clock.output_blocked()
                        await self.stream.send(out)
                        pump.clock.output_drained()
                        if runner.stopping and pump.idle:  # shutdown began while we flushed
                            self.interrupted = _SHUTDOWN
                            return b""
                    self.waiting = _READING
                    data = await self.stream.receive(READ_SIZE)
                except anyio.EndOfStream:
                    data = b""
                except _IO_ERRORS as exc:
                    self.connection_lost(exc)
                    data = b""
                finally:
                    self.waiting = _BUSY
                if self.interrupted is not None:  # the data came too late: drop it
                    return b""
                pump.receive_data(data)
                continue
            if out:
                await self.send(out)
            if isinstance(action, HookCall):
                await self.call(pump, action)
            elif action is START_TLS:
                await self.start_tls(pump)
            elif action is CLOSE:
                return b""

    async def send(self, out: bytes) -> None:
        """Send within the pump's deadline (inside `timer`); a dead peer ends the session."""
        if self.lost:
            return
        assert self.pump is not None
        self.waiting = _WRITING
        self.pump.clock.output_blocked()
        try:
            await self.stream.send(out)
            self.pump.clock.output_drained()
        except _IO_ERRORS as exc:
            self.connection_lost(exc)
            self.pump.receive_data(b"")
        finally:
            self.waiting = _BUSY

    async def say(self, out: bytes) -> None:
        """Send outside the pump loop (a refusal, a 421), bounded by its own timeout."""
        if self.lost or not out:
            return
        with anyio.move_on_after(self.runner.app.options.timeout):
            try:
                await self.stream.send(out)
            except _IO_ERRORS as exc:
                self.connection_lost(exc)
            return
        self.lost = True

    def connection_lost(self, exc: BaseException) -> None:
        log.debug("%s: connection lost: %r", self.peer_text, exc.__cause__ or exc)
        self.lost = True

    async def call(self, pump: Pump, call: HookCall) -> None:
        """Run the hook until its deadline. Anything it raises, BaseException included, is
        its failure; only our own cancellation (a cut-off) goes through."""
        remaining = pump.deadline().at - time.monotonic()
        with anyio.move_on_after(remaining) as scope:
            if call.mode is Mode.THREAD:
                await self.call_in_thread(pump, call)
                return
            try:
                result = await cast(Awaitable[object], call.fn(*call.args))
            except anyio.get_cancelled_exc_class() as exc:
                if anyio.current_effective_deadline() == -math.inf:
                    raise  # a scope was cancelled: ours (the timeout) or the cut-off
                pump.hook_failed(exc, call)
            except BaseException as exc:  # a hook's SystemExit is the hook's failure
                pump.hook_failed(exc, call)
            else:
                pump.hook_done(result, call)  # type: ignore[arg-type]
        if scope.cancelled_caught:
            pump.hook_timed_out(call)

    async def call_in_thread(self, pump: Pump, call: HookCall) -> None:
        done = anyio.Event()
        token = anyio.lowlevel.current_token()
        outcome: list[tuple[bool, HookOutcome | BaseException]] = []

        def report(ok: bool, result: HookOutcome | BaseException) -> None:
            outcome.append((ok, result))
            with contextlib.suppress(Exception):  # the run is over: nobody waits
                anyio.from_thread.run_sync(done.set, token=token)

        job = self.runner.pool.submit(call.fn, call.args, report)
        if job is None:
            pump.hook_unavailable(call)
            return
        try:
            await done.wait()
        finally:
            if not outcome:  # timed out or cut off: its thread is left behind
                self.runner.pool.abandon(job)
        ok, result = outcome[0]
        if not ok:
            assert isinstance(result, BaseException)
            pump.hook_failed(result, call)
        else:
            assert not isinstance(result, BaseException)
            pump.hook_done(result, call)  # type: ignore[arg-type]  # THREAD: not async

    async def finish(self, pump: Pump) -> None:
        """Run an aborted session to its end (the close hook) without reading or writing."""
        self.lost = True
        while True:
            action = pump.next_action()
            pump.data_to_send()
            if isinstance(action, HookCall):
                await self.call(pump, action)
            elif action is NEED_DATA:
                pump.receive_data(b"")
            elif action is START_TLS:
                pump.abort(_TLS_FAILED, "aborted")
            else:
                return

    # ------------------------------------------------------------------ TLS

    async def handshake(self) -> bool:
        """Wrap the stream in TLS. On failure the connection is dropped (returns False)."""
        context = self.runner.app.options.ssl_context
        assert context is not None
        try:
            with anyio.fail_after(self.runner.app.options.tls_handshake_timeout):
                self.stream = await TLSStream.wrap(
                    self.stream, server_side=True, ssl_context=context, standard_compatible=False
                )
        except (TimeoutError, anyio.EndOfStream, *_IO_ERRORS) as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else str(exc) or repr(exc)
            log.info("%s: TLS handshake failed: %s", self.peer_text, reason)
            self.lost = True
            return False
        return True

    async def start_tls(self, pump: Pump) -> None:
        trailing = pump.trailing_data()
        if trailing:  # came behind a PROXY header: the handshake's first bytes
            self.stream = _Prefixed(self.stream, trailing)
        if self.lost or not await self.handshake():
            # Not receive_data(b""): the engine waits for tls_started() and would never close.
            pump.abort(_TLS_FAILED, "tls failed")  # the reply is dropped: no channel for it
            return
        pump.tls_started(self.stream.extra(TLSAttribute.tls_version, None))

    # ------------------------------------------------------------------ shutdown

    async def cut_off(self) -> None:
        """The grace period is over: 421, then run the session to its end (the close hook).
        Runs shielded and bounded by CUTOFF_WAIT."""
        pump = self.pump
        if pump is None:
            return
        await self.say(pump.shutting_down())
        await self.finish(pump)
