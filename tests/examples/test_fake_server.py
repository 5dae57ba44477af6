"""examples/fake_server.py: the seed's SP_FakeSmtpHandler, with the same replies."""

from __future__ import annotations

import importlib.util
import socket
from pathlib import Path
from typing import Any

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

pytestmark = pytest.mark.timeout(60)


def load(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_default_port_is_the_seeds() -> None:
    args = load("fake_server").parse_args([])
    assert (args.host, args.port) == ("127.0.0.1", 1025)


def test_replies_are_the_seeds(run_example: Any) -> None:
    server = run_example("fake_server.py", "--port", "0", "--hostname", "fake.example")
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        replies = sock.makefile("rb")
        assert replies.readline() == b"220 fake.example ESMTP smtpkit\r\n"

        def say(line: bytes) -> bytes:
            sock.sendall(line + b"\r\n")
            reply = replies.readline()
            while reply[3:4] == b"-":
                reply = replies.readline()
            return reply

        assert say(b"HELO client.example").startswith(b"250 fake.example")
        assert say(b"MAIL FROM:<a@example.org>") == b"250 <a@example.org>, sender ok\r\n"
        assert say(b"RCPT TO:<b@example.org>") == b"250 <b@example.org>, recipient ok\r\n"
        assert say(b"RCPT TO:<c@example.org>") == b"250 <c@example.org>, recipient ok\r\n"
        assert say(b"DATA").startswith(b"354 ")
        assert (
            say(b"Subject: hi\r\n\r\nhello\r\n.")
            == b"250 Requested mail action okay, completed.\r\n"
        )
        assert say(b"QUIT").startswith(b"221 ")
