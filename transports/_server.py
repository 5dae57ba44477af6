"""The programmatic API: `Server` (start and stop it) and `serve()` (run in the foreground).

A Server binds its listeners itself, then hands them to a Runner, the one piece that differs
between transports. Each Runner serves the sockets until `stop()` and shares everything else
(sessions, limits, options) through `App`.
"""

from __future__ import annotations

import abc
import importlib
import logging
import signal
import socket
import threading
import types
from collections.abc import Callable
from typing import ClassVar, final

from smtpkit.handlers import HandlerFactory

from ._limits import raise_open_file_limit
from ._listen import Address, bind, drop_privileges
from ._logging import log_to_stderr
from ._observer import Observer
from ._options import App, ServerOptions

__all__ = ["TRANSPORTS", "Runner", "Server", "serve"]

log = logging.getLogger("smtpkit")

#: transport name -> "module:Runner class", imported on first use.
TRANSPORTS: dict[str, str] = {
    "asyncio": "smtpkit.transports._asyncio:AsyncioRunner",
    "anyio": "smtpkit.transports._anyio:AnyioRunner",
    "threads": "smtpkit.transports._threads:ThreadsRunner",
}


class Runner(abc.ABC):
    """One transport's serving loop. `run()` blocks in its thread until stopped.

    `stop()` is called from any thread or from a signal handler in the run() thread; it is
    idempotent. It starts a graceful shutdown: stop accepting, send 421 4.3.2 to idle
    sessions, let transactions in flight finish for up to `options.grace_period`, then cut
    them off, and return from `run()`.
    """

    name: ClassVar[str]

    def __init__(self, app: App) -> None:
        self.app = app

    @classmethod
    def check(cls, app: App) -> None:
        """Refuse, before binding, what this transport cannot do (raise ValueError)."""
        return None

    @abc.abstractmethod
    def run(
        self,
        listeners: list[socket.socket],
        tls_listeners: list[socket.socket],
        ready: Callable[[], None],
    ) -> None:
        """Serve until stopped. Call `ready()` once accepting. Close the listeners on exit."""

    @abc.abstractmethod
    def stop(self) -> None: ...


def _runner_class(transport: str) -> type[Runner]:
    try:
        target = TRANSPORTS[transport]
    except KeyError:
        raise ValueError(f"unknown transport {transport!r}; one of {sorted(TRANSPORTS)}") from None
    module, _, attr = target.partition(":")
    cls: type[Runner] = getattr(importlib.import_module(module), attr)
    return cls


@final
class Server:
    """An SMTP server: `start()` serves in a background thread, `stop()` ends it gracefully.

    `observer` is told what the server does (`Metrics` for Prometheus); None reports nothing.

    >>> with Server(MyHandler, ServerOptions(listen=(("127.0.0.1", 0),))) as server:
    ...     host, port = server.addresses[0]
    """

    def __init__(
        self,
        handler_factory: HandlerFactory,
        options: ServerOptions | None = None,
        *,
        transport: str = "asyncio",
        user: str | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.options = options if options is not None else ServerOptions()
        self.transport = transport
        self.app = App(handler_factory, self.options, observer)
        self._runner_cls = _runner_class(transport)
        self._runner_cls.check(self.app)
        self._user = user
        self._runner: Runner | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.addresses: list[Address] = []
        self.tls_addresses: list[Address] = []

    @property
    def host(self) -> str:
        """The host of the first listener, once started (handy after binding port 0)."""
        return self._first_address()[0]

    @property
    def port(self) -> int:
        """The port of the first listener, once started (the one the OS picked for port 0)."""
        return self._first_address()[1]

    @property
    def active_sessions(self) -> int:
        """Connections holding a slot now (admitted and not yet closed): 0 once every client
        is gone. Read it from any thread."""
        return self.app.lifecycle.active_sessions

    def _first_address(self) -> Address:
        addresses = self.addresses or self.tls_addresses
        if not addresses:
            raise RuntimeError("the server is not listening yet: start() it first")
        return addresses[0]

    def _bind(self) -> tuple[list[socket.socket], list[socket.socket]]:
        o = self.options
        raise_open_file_limit(o.max_connections, o.workers)
        plain = self._bind_each(o.listen)
        try:
            secure = self._bind_each(o.tls_listen)
        except BaseException:
            for sock in plain:
                sock.close()
            raise
        self.addresses = [sock.getsockname()[:2] for sock in plain]
        self.tls_addresses = [sock.getsockname()[:2] for sock in secure]
        try:
            if self._user:
                drop_privileges(self._user)
            # As the user that serves: its spool folder, and those of dead instances gone.
            self.app.spooler.start()
        except BaseException:
            for sock in (*plain, *secure):
                sock.close()
            raise
        return plain, secure

    def _bind_each(self, addresses: tuple[Address, ...]) -> list[socket.socket]:
        """bind() the addresses in turn, noting in the App which sockets are proxy listeners
        (a host name may bind several)."""
        sockets: list[socket.socket] = []
        try:
            for address in addresses:
                group = bind((address,), reuse_port=self.options.reuse_port)
                sockets += group
                if address in self.options.proxy_listeners:
                    self.app.proxy_bound.update(sock.getsockname()[:2] for sock in group)
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        return sockets

    def start(self) -> Server:
        """Bind, start serving in a thread, and return once connections are accepted."""
        if self._thread is not None:
            raise RuntimeError("server already started")
        # The runner is made before _bind() may drop root: it imports what it needs then.
        self._runner = self._runner_cls(self.app)
        plain, secure = self._bind()
        ready = threading.Event()

        def main() -> None:
            assert self._runner is not None
            try:
                self._runner.run(plain, secure, ready.set)
            except BaseException as exc:
                self._error = exc
                log.exception("%s transport failed", self.transport)
            finally:
                ready.set()

        self._thread = threading.Thread(target=main, name=f"smtpkit-{self.transport}", daemon=True)
        self._thread.start()
        ready.wait()
        if self._error is not None:
            raise RuntimeError(f"{self.transport} transport failed to start") from self._error
        return self

    def stop(self) -> None:
        """Shut down gracefully and wait for the serving thread to end."""
        if self._runner is not None:
            self._runner.stop()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.app.spooler.stop()

    def serve_forever(self) -> None:
        """Serve in this thread until SIGTERM or SIGINT, then shut down gracefully."""
        runner = self._runner = self._runner_cls(self.app)
        plain, secure = self._bind()

        def on_signal(signum: int, frame: types.FrameType | None) -> None:
            log.info("received %s, shutting down", signal.Signals(signum).name)
            runner.stop()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            runner.run(plain, secure, lambda: None)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.app.spooler.stop()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def serve(
    handler_factory: HandlerFactory,
    options: ServerOptions | None = None,
    *,
    transport: str = "asyncio",
    user: str | None = None,
) -> None:
    """Run an SMTP server in the foreground until SIGTERM or SIGINT.

    When the application has configured no logging for `smtpkit`, its lines go to stderr
    through a bounded queue (`log_to_stderr()`), so a slow stderr never stalls serving."""
    server = Server(handler_factory, options, transport=transport, user=user)
    channel = None if log.hasHandlers() else log_to_stderr()
    try:
        server.serve_forever()
    finally:
        if channel is not None:
            channel.close()
