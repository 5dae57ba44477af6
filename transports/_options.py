"""Server options shared by every transport, and the App that turns them into sessions."""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import ssl
from dataclasses import dataclass, field
from typing import Final, final

from smtp_core import Config, Reply, ServerConnection, format_reply
from smtpkit.handlers import Handler, HandlerFactory

from ._lifecycle import Lifecycle, Refusal, Slot
from ._limits import ConnectionLimits, in_networks
from ._observer import Observer
from ._pump import HookPlan, Pump, plan_for
from ._spool import DEFAULT_MAX_BYTES, DEFAULT_THRESHOLD, Spooler

__all__ = ["LINGER", "App", "ServerOptions"]

log = logging.getLogger("smtpkit")

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
    #: Listeners (of `listen` and `tls_listen`) behind a proxy that opens each connection
    #: with a PROXY protocol header (v1 or v2), which names the client; on a `tls_listen`
    #: listener the header comes before the TLS handshake.
    proxy_listeners: tuple[Address, ...] = ()
    #: Networks (CIDR) of those proxies: a connection to a proxy listener from anywhere else
    #: is closed without a word. Required with `proxy_listeners`; these addresses are also
    #: exempt from `max_per_ip` (their clients are counted once the header names them).
    proxy_trusted: tuple[str, ...] = ()

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
        for address in self.proxy_listeners:
            if address not in self.listen and address not in self.tls_listen:
                raise ValueError(f"proxy listener {address} is not in listen or tls_listen")
        if self.proxy_listeners and not self.proxy_trusted:
            raise ValueError(
                "the PROXY protocol needs proxy_trusted (--proxy-trusted CIDR): the proxies'"
                " networks; nobody else may name a client"
            )
        for cidr in self.proxy_trusted:
            ipaddress.ip_network(cidr, strict=False)  # ValueError for a bad one


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
        #: Keyed by whether the handler checks AUTH and whether a PROXY header comes first.
        self._configs: dict[tuple[bool, bool], Config] = {}
        self._refusals: dict[Refusal, bytes] = {}
        #: The bound (host, port) of each listener of `options.proxy_listeners`, filled in by
        #: the Server as it binds them.
        self.proxy_bound: set[Address] = set()

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

    def config_for(self, plan: HookPlan, proxy: bool = False) -> Config:
        """The session Config: STARTTLS when we have TLS, AUTH when the handler checks it, the
        PROXY header first on a proxy listener."""
        key = (plan.offers_auth, proxy)
        config = self._configs.get(key)
        if config is None:
            base = self.options.config
            changes: dict[str, object] = {
                "tls_available": self.options.ssl_context is not None,
                "proxy_protocol": proxy,
            }
            if plan.offers_auth and not base.auth_mechanisms:
                changes["auth_mechanisms"] = ("PLAIN", "LOGIN")
            elif not plan.offers_auth:
                changes["auth_mechanisms"] = ()
            config = self._configs[key] = dataclasses.replace(base, **changes)  # type: ignore[arg-type]
        return config

    def proxied(self, sockname: tuple[object, ...]) -> bool:
        """Whether the listener bound to `sockname` (its getsockname()) expects a PROXY
        header before each connection's own bytes."""
        return tuple(sockname[:2]) in self.proxy_bound

    def new_session(
        self,
        peer: Address | None,
        *,
        tls: bool = False,
        tls_version: str | None = None,
        proxy: bool = False,
        slot: Slot | None = None,
    ) -> Pump:
        """A session for a new connection; `tls`/`tls_version` for implicit TLS (SMTPS).

        `proxy`: it came to a proxy listener, so a PROXY header comes first (and with `tls`,
        the TLS handshake after it); from outside `proxy_trusted` it is closed at once, with
        no greeting. `slot`: its place in the limits, moved to the client the header names."""
        handler = self.factory()
        plan = plan_for(handler)
        config = self.config_for(plan, proxy)
        conn = ServerConnection(config, peer, tls=tls, auto_accept=plan.auto_accept)
        pump = Pump(
            conn,
            handler,
            lifecycle=self.lifecycle,
            received_header=self.options.received_header,
            tls_version=tls_version,
            spooler=self.spooler,
            observer=self.observer,
            slot=slot,
        )
        if proxy and not in_networks(peer[0] if peer else "", self.options.proxy_trusted):
            log.info("%s is not a trusted proxy (--proxy-trusted): closed", pump.peer_text)
            pump.abort(None, "untrusted proxy")
        return pump

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
