"""`smtpkit.transports.testing`: the `running_server()` helper and the pytest plugin users get.

The helper runs on every transport; the plugin is checked the way a user meets it: in a fresh
pytest process, found through the `pytest11` entry point, with no conftest of ours around.
"""

from __future__ import annotations

import smtplib
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from support import WAIT, Transport

from smtpkit.handlers import Accept, Handler, Message
from smtpkit.transports import Server, running_server
from smtpkit.transports.testing import TEST_GRACE_PERIOD, ServerFactory

MESSAGE = b"Subject: test\r\n\r\nHello.\r\n"


class Keep(Handler):
    blocking = False

    def __init__(self, messages: list[bytes]) -> None:
        self.messages = messages

    def data(self, message: Message) -> Accept:
        self.messages.append(bytes(message))
        return Accept()


def test_running_server(transport: Transport) -> None:
    transport.require()
    messages: list[bytes] = []
    with running_server(lambda: Keep(messages), **transport.server_args) as server:
        assert isinstance(server, Server)
        assert (server.host, server.port) == server.addresses[0]
        assert server.host == "127.0.0.1" and server.port > 0
        assert server.options.grace_period == TEST_GRACE_PERIOD
        assert server.options.anyio_backend == transport.anyio_backend
        assert server.options.uvloop == transport.uvloop
        with smtplib.SMTP(server.host, server.port) as client:
            client.sendmail("a@b.example", ["c@d.example"], MESSAGE)
    assert len(messages) == 1 and messages[0].endswith(MESSAGE)
    with pytest.raises(ConnectionRefusedError):  # stopped at the end of the block
        socket.create_connection(server.addresses[0], timeout=WAIT).close()


def test_running_server_overrides(transport: Transport) -> None:
    transport.require()
    kw: dict[str, Any] = transport.server_args
    with running_server(Handler, timeout=7.0, max_connections=3, **kw) as server:
        assert (server.options.timeout, server.options.max_connections) == (7.0, 3)
    # Not a ServerOptions field: said at once.
    with pytest.raises(TypeError), running_server(Handler, no_such_option=1, **kw):
        pass


def test_server_host_and_port_need_a_started_server() -> None:
    with pytest.raises(RuntimeError, match="start"):
        _ = Server(Handler).port


def test_smtp_server_factory_fixture(
    transport: Transport, smtp_server_factory: ServerFactory, request: pytest.FixtureRequest
) -> None:
    assert request.config.pluginmanager.has_plugin("smtpkit"), "not loaded by its entry point"
    transport.require()
    messages: list[bytes] = []
    kw: dict[str, Any] = transport.server_args
    servers = [
        smtp_server_factory(lambda: Keep(messages), **kw),
        smtp_server_factory(lambda: Keep(messages), timeout=5.0, **kw),
    ]
    assert servers[1].options.timeout == 5.0
    for server in servers:
        with smtplib.SMTP(server.host, server.port) as client:
            client.sendmail("a@b.example", ["c@d.example"], MESSAGE)
    assert len(messages) == 2


USER_TESTS = """
import smtplib
import socket

import pytest

from smtpkit.handlers import SinkHandler

servers = []


def test_start(smtp_server_factory):
    servers.append(smtp_server_factory(SinkHandler))
    servers.append(smtp_server_factory(SinkHandler, transport="anyio"))
    for server in servers:
        with smtplib.SMTP(server.host, server.port) as client:
            assert client.noop()[0] == 250


def test_stopped_at_teardown():
    assert len(servers) == 2
    for server in servers:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((server.host, server.port), timeout=5)
"""


def test_plugin_in_a_users_project(tmp_path: Path) -> None:
    # A user's project: no conftest, no configuration; the fixture comes from the entry point.
    (tmp_path / "test_user.py").write_text(textwrap.dedent(USER_TESTS))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_user.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout
