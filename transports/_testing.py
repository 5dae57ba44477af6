"""`running_server()`: a real server on a free port, for testing handlers (no pytest needed).

The public home is `smtpkit.transports.testing`, which adds the pytest plugin; this module
stays free of pytest so that `transports` can export `running_server` without importing it.
It imports the server only when called: pytest imports the plugin before coverage starts (see
`transports/__init__.py`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from smtpkit.handlers import HandlerFactory

    from ._server import Server

__all__ = ["TEST_GRACE_PERIOD", "running_server"]

#: The shutdown grace period `running_server()` uses unless told otherwise: a test that leaves a
#: hook stuck should not make the teardown wait the production default of 30 seconds.
TEST_GRACE_PERIOD = 2.0


@contextlib.contextmanager
def running_server(
    handler_factory: HandlerFactory,
    *,
    transport: str = "asyncio",
    anyio_backend: str = "asyncio",
    **option_overrides: Any,
) -> Iterator[Server]:
    """Serve `handler_factory` on 127.0.0.1 on a free port; yield the started `Server`.

    `server.host` and `server.port` say where to connect. The server is stopped gracefully
    when the block ends. `option_overrides` are `ServerOptions` fields; `listen` defaults to
    `(("127.0.0.1", 0),)` and `grace_period` to `TEST_GRACE_PERIOD`.

    >>> with running_server(MyHandler) as server:
    ...     with smtplib.SMTP(server.host, server.port) as client:
    ...         client.sendmail("a@example.org", ["b@example.org"], b"Subject: hi\\r\\n\\r\\nhi")
    """
    from ._options import ServerOptions
    from ._server import Server

    overrides: dict[str, Any] = {
        "listen": (("127.0.0.1", 0),),
        "grace_period": TEST_GRACE_PERIOD,
        "anyio_backend": anyio_backend,
    }
    overrides.update(option_overrides)
    options = ServerOptions(**overrides)
    with Server(handler_factory, options, transport=transport) as server:
        yield server
