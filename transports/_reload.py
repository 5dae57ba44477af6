"""SIGHUP: read the configuration file and the TLS certificate again, without dropping a session.

`smtpkit serve` reads its command line and `--config` file again (`ServeCommand` anew, checked
as at start: the handler, the files, the certificate). If anything is wrong, one error line is
logged and the configuration in force stays, whole. Otherwise new sessions get the new handler
(policies, deliverer), the new `Config` (hostname, sizes, ...) and the new timeouts, and the
certificate is loaded into the server's own `SSLContext`, so that every listener, implicit TLS
included, hands it to the next handshake. Sessions in flight finish with what they began with.

What the server set up at start stays as it was, with a warning when the file changed it:
the listeners (and which are behind a proxy, and the proxies trusted), the connection limits,
the worker pool, the spool, the transport, `--user`, `--processes`, the log format, the
metrics address, and whether TLS is offered at all.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any, Final

from ._clierror import CLIError
from ._command import ServeCommand
from ._server import Server

__all__ = ["FIXED_COMMAND", "FIXED_OPTIONS", "reload_server"]

log = logging.getLogger("smtpkit")

#: `ServerOptions` fields that take effect at start only.
FIXED_OPTIONS: Final = (
    "listen",
    "tls_listen",
    "max_connections",
    "max_per_ip",
    "workers",
    "spool_threshold",
    "spool_dir",
    "spool_max_bytes",
    "reuse_port",
    "anyio_backend",
    "uvloop",
    "proxy_listeners",
    "proxy_trusted",
)
#: `ServeCommand` fields that take effect at start only.
FIXED_COMMAND: Final = ("transport", "user", "processes", "log_format", "metrics")


def reload_server(
    server: Server,
    current: ServeCommand,
    read: Callable[[], ServeCommand],
    prepare: Callable[[ServeCommand], None],
) -> ServeCommand:
    """Apply the command `read()` gives now to `server`, which runs `current`; `prepare` checks
    and makes what the new one needs (its Maildir, its handler), raising CLIError. Returns the
    command in force afterwards: the new one, or `current` when the new one is refused."""
    try:
        new = read()
        prepare(new)
        _reload_certificate(current, new)
    except CLIError as exc:
        log.error("reload failed; the configuration in force is kept: %s", exc)
        return current
    for owner, names, kept in (
        (current, FIXED_COMMAND, new),
        (current.options, FIXED_OPTIONS, new.options),
    ):
        for name in names:
            if getattr(owner, name) != getattr(kept, name):
                log.warning("reload: %s changed, which takes a restart; kept as it was", name)
    if (current.options.ssl_context is None) != (new.options.ssl_context is None):
        log.warning("reload: TLS was turned on or off, which takes a restart; kept as it was")
    options = dataclasses.replace(
        new.options,
        ssl_context=current.options.ssl_context,
        **_fields(current.options, FIXED_OPTIONS),
    )
    server.app.reload(new.factory, options)
    if new.log_level != current.log_level:
        logging.getLogger().setLevel(new.log_level)
    in_force = dataclasses.replace(new, options=options, **_fields(current, FIXED_COMMAND))
    log.info(
        "reloaded: handler %s%s; new sessions use it",
        new.handler,
        ", TLS certificate" if new.tls_files and current.options.ssl_context else "",
    )
    return in_force


def _fields(owner: object, names: tuple[str, ...]) -> dict[str, Any]:
    return {name: getattr(owner, name) for name in names}


def _reload_certificate(current: ServeCommand, new: ServeCommand) -> None:
    """Load the new certificate into the context every listener uses (checked already: the new
    command made a context of its own from the same files)."""
    context = current.options.ssl_context
    if context is None or new.tls_files is None:
        return
    cert, key = new.tls_files
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ValueError) as exc:  # the files changed again since they were read
        raise CLIError(f"cannot load TLS certificate {cert}: {exc}") from None
