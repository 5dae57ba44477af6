"""Server options shared by every transport, and the App that turns them into sessions."""

from __future__ import annotations

import dataclasses
import ssl
from dataclasses import dataclass, field
from typing import Final, final

from smtp_core import Config, Reply, ServerConnection, format_reply
from smtpkit.handlers import Handler, HandlerFactory

from ._lifecycle import Lifecycle, Refusal
from ._limits import ConnectionLimits
from ._observer import Observer
from ._pump import HookPlan, Pump, plan_for
from ._spool import DEFAULT_MAX_BYTES, DEFAULT_THRESHOLD, Spooler

__all__ = ["LINGER", "App", "ServerOptions"]

Address = tuple[str, int]

#: After the last reply, how long a half-closed connection waits for the peer's EOF before it
#: is closed (closing at once could reset the connection and destroy that reply in flight).
LINGER: Final = 2.0


@final
@dataclass(frozen=True, kw_only=True)
class ServerOptions:
    """How a server listens, limits and times out. `config` shapes each SMTP session."""

    config: Config = field(default_factory=Config)
    #: Plain SMTP listeners (STARTTLS is offered on them when `ssl_context` is set).
    listen: tuple[Address, ...] = (("127.0.0.1", 1025),)
    #: Implicit-TLS (SMTPS) listeners; they need `ssl_context`.
    tls_listen: tuple[Address, ...] = ()
    ssl_context: ssl.SSLContext | None = None
    #: Seconds a command line has from its first byte (and an idle session to send one), and
    #: a client that does not read our replies before it is cut off (421 4.4.2 on expiry).
    #: RFC 5321 asks for 5 minutes. Trickling bytes never extends it.
    timeout: float = 300.0
    #: Message content has this many seconds, plus one second per `min_data_rate` bytes
    #: received up to `config.max_message_size` (so a large message above the rate is never
    #: cut off, and content past the limit buys no time); no pause may last over `timeout`.
    data_timeout: float = 600.0
    #: Message content must arrive at least this fast (bytes/s), on top of `data_timeout`,
    #: as Postfix's smtpd_min_data_rate. 0 makes `data_timeout` a cap on the whole message.
    min_data_rate: int = 500
    #: A hook that runs longer gets the client 451 4.3.0 (421 from `welcome`); a plain hook's
    #: worker thread is abandoned and replaced (up to `workers` of them), an async one cancelled.
    hook_timeout: float = 300.0
    #: While more than 80% of the connection slots are in use (stress), every deadline is at
    #: most this many seconds, the running ones included (Postfix: smtpd_timeout under stress).
    stress_timeout: float = 10.0
    #: The TLS handshake must finish within this many seconds.
    tls_handshake_timeout: float = 30.0
    max_connections: int = 1000
    #: Per client IP; 0 disables. Loopback is exempt, like Postfix's $mynetworks exception.
    max_per_ip: int = 50
    #: Worker threads for plain (blocking) hooks.
    workers: int = 32
    #: On shutdown, how long transactions in flight may take before they are cut off.
    grace_period: float = 30.0
    #: Prepend a Received: header to each message, as Postfix does.
    received_header: bool = True
    #: A message's content stays in memory up to this many bytes, then goes to a spool file.
    spool_threshold: int = DEFAULT_THRESHOLD
    #: Where spool files go, in a folder of each server instance; None: smtpkit-spool-<uid> in
    #: the system temp dir.
    spool_dir: str | None = None
    #: Spool files may use this many bytes of disk in all; content past it is dropped and
    #: answered 452 4.3.1.
    spool_max_bytes: int = DEFAULT_MAX_BYTES
    #: Open listeners with SO_REUSEPORT, so that several processes can share a port.
    reuse_port: bool = False
    #: The anyio transport's backend: "asyncio" or "trio".
    anyio_backend: str = "asyncio"
    #: The asyncio transport uses uvloop when installed, unless this is False.
    uvloop: bool = True

    def __post_init__(self) -> None:
        if self.tls_listen and self.ssl_context is None:
            raise ValueError("tls_listen needs an ssl_context")
        if not self.listen and not self.tls_listen:
            raise ValueError("nothing to listen on")
        for name in (
            "timeout",
            "data_timeout",
            "tls_handshake_timeout",
            "hook_timeout",
            "stress_timeout",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.max_connections < 1 or self.workers < 1 or self.max_per_ip < 0:
            raise ValueError("max_connections and workers must be positive, max_per_ip >= 0")
        if self.min_data_rate < 0:
            raise ValueError("min_data_rate must be >= 0")
        if self.grace_period < 0:
            raise ValueError("grace_period must be >= 0")
        if self.spool_threshold < 0 or self.spool_max_bytes < 0:
            raise ValueError("spool_threshold and spool_max_bytes must be >= 0")
        if self.anyio_backend not in ("asyncio", "trio"):
            raise ValueError("anyio_backend is 'asyncio' or 'trio'")


@final
class App:
    """What every transport needs from the application: new sessions, admission, refusal.

    Transport-neutral; one per server. `lifecycle` decides admission, deadlines, stress and
    shutdown (see `_lifecycle`); `lifecycle.active_sessions` counts the slots in use.
    """

    def __init__(
        self, factory: HandlerFactory, options: ServerOptions, observer: Observer | None = None
    ) -> None:
        self.factory = factory
        self.options = options
        #: Told what the server does (metrics); None: nothing is reported.
        self.observer = observer
        self.lifecycle = Lifecycle(options, observer=observer)
        #: Where message content waits for the handler's decision.
        self.spooler = Spooler(
            threshold=options.spool_threshold,
            folder=options.spool_dir,
            max_bytes=options.spool_max_bytes,
            observer=observer,
        )
        self._configs: dict[bool, Config] = {}  # keyed by whether the handler checks AUTH
        self._refusals: dict[Refusal, bytes] = {}

    def reload(self, factory: HandlerFactory, options: ServerOptions) -> None:
        """Serve new sessions with `factory` and `options` (SIGHUP); sessions in flight keep
        their handler and Config. The caller keeps what is fixed at start (listeners, limits,
        the spool, the pool) as it was: see `_reload.py`."""
        self.factory = factory
        self.options = options
        self.lifecycle.options = options
        self._configs = {}
        self._refusals = {}

    @property
    def limits(self) -> ConnectionLimits:
        """The connection counts (`limits.active`: sessions holding a slot)."""
        return self.lifecycle.limits

    def handler_class(self) -> type[Handler]:
        """The handler class, without making a handler when the factory is a class."""
        factory = self.factory
        inner = getattr(factory, "func", factory)  # functools.partial
        if isinstance(inner, type) and issubclass(inner, Handler):
            return inner
        return type(factory())

    def config_for(self, plan: HookPlan) -> Config:
        """The session Config: STARTTLS when we have TLS, AUTH when the handler checks it."""
        config = self._configs.get(plan.offers_auth)
        if config is None:
            base = self.options.config
            changes: dict[str, object] = {"tls_available": self.options.ssl_context is not None}
            if plan.offers_auth and not base.auth_mechanisms:
                changes["auth_mechanisms"] = ("PLAIN", "LOGIN")
            elif not plan.offers_auth:
                changes["auth_mechanisms"] = ()
            config = self._configs[plan.offers_auth] = dataclasses.replace(base, **changes)  # type: ignore[arg-type]
        return config

    def new_session(
        self, peer: Address | None, *, tls: bool = False, tls_version: str | None = None
    ) -> Pump:
        """A session for a new connection; `tls`/`tls_version` for implicit TLS (SMTPS)."""
        handler = self.factory()
        plan = plan_for(handler)
        conn = ServerConnection(self.config_for(plan), peer, tls=tls, auto_accept=plan.auto_accept)
        return Pump(
            conn,
            handler,
            lifecycle=self.lifecycle,
            received_header=self.options.received_header,
            tls_version=tls_version,
            spooler=self.spooler,
            observer=self.observer,
        )

    def refusal(self, reason: Refusal) -> bytes:
        """The 421 for a client turned away before a session is made (a connection limit, a
        shutdown), the same on every transport and listener; made once per reason, since
        refusals come in floods."""
        wire = self._refusals.get(reason)
        if wire is None:
            text = f"{self.options.config.hostname} Error: {reason.value}"
            reply = Reply(code=421, text=(text,), enhanced="4.7.0")
            wire = format_reply(reply, enhanced=self.options.config.enhanced_status_codes)
            self._refusals[reason] = wire
        return wire
