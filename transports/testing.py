"""Testing your handlers against a real server: `running_server()` and a pytest plugin.

`running_server()` is a context manager that serves a handler on 127.0.0.1 on a free port,
with any transport, and stops the server when the block ends:

    from smtpkit.transports.testing import running_server

    def test_my_handler():
        with running_server(MyHandler) as server:
            with smtplib.SMTP(server.host, server.port) as client:
                client.sendmail("a@example.org", ["b@example.org"], b"Subject: hi\\r\\n\\r\\nhi")

Installing smtpkit also registers this module as a pytest plugin (entry point `smtpkit`).
It offers the fixture `smtp_server_factory`: a callable with `running_server()`'s arguments
that returns a started `Server`. Every server it started is stopped at the test's teardown:

    def test_relay(smtp_server_factory):
        upstream = smtp_server_factory(SinkHandler)
        server = smtp_server_factory(MyRelay, transport="threads")
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

import pytest

from ._testing import TEST_GRACE_PERIOD, running_server

if TYPE_CHECKING:  # pytest imports this plugin before coverage starts: import nothing heavy
    from smtpkit.handlers import HandlerFactory

    from ._server import Server

__all__ = ["TEST_GRACE_PERIOD", "ServerFactory", "running_server", "smtp_server_factory"]


class ServerFactory(Protocol):
    """The type of the `smtp_server_factory` fixture (for annotating your tests)."""

    def __call__(
        self,
        handler_factory: HandlerFactory,
        *,
        transport: str = "asyncio",
        anyio_backend: str = "asyncio",
        **option_overrides: Any,
    ) -> Server: ...


@pytest.fixture
def smtp_server_factory() -> Iterator[ServerFactory]:
    """Start servers with `running_server()`'s arguments; all are stopped at teardown."""
    with contextlib.ExitStack() as stack:

        def start(
            handler_factory: HandlerFactory,
            *,
            transport: str = "asyncio",
            anyio_backend: str = "asyncio",
            **option_overrides: Any,
        ) -> Server:
            return stack.enter_context(
                running_server(
                    handler_factory,
                    transport=transport,
                    anyio_backend=anyio_backend,
                    **option_overrides,
                )
            )

        yield start
