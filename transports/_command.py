"""`ServeCommand`: what `smtpkit serve ...` means, ready to run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import final

from smtpkit.handlers import HandlerFactory

from ._listen import Address
from ._logging import LogFormat
from ._options import ServerOptions

__all__ = ["ServeCommand"]


@final
@dataclass(frozen=True, kw_only=True)
class ServeCommand:
    """`Server(factory, options, transport=..., user=...)` and how to run it. The flags that
    set its fields (--transport, --user, --processes, --log-level, --handler) read their
    defaults from here."""

    factory: HandlerFactory
    options: ServerOptions
    transport: str = "asyncio"
    #: Drop root privileges to this user after binding.
    user: str | None = None
    #: Server processes sharing the listeners (SO_REUSEPORT).
    processes: int = 1
    log_level: str = "INFO"
    log_format: LogFormat = LogFormat.TEXT
    #: The certificate and key files of `options.ssl_context` (key None: in the cert file),
    #: loaded into it again on SIGHUP.
    tls_files: tuple[str, str | None] | None = None
    #: Serve Prometheus metrics here (--processes: the parent serves the children's sum).
    metrics: Address | None = None
    #: The handler as given to --handler (or [deliver] type), for messages and the log.
    handler: str = "maildir"
    #: The Maildir folder to prepare before serving (the maildir handler), absolute.
    maildir: Path | None = None
    #: The maildir handler delivers into one Maildir per recipient under `maildir`.
    per_recipient: bool = False
    #: Things worth a warning at startup (logging is not set up while parsing).
    warnings: tuple[str, ...] = field(default=())
