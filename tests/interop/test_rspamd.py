"""The rspamd policy against a real rspamd from Debian (scripts/setup-test), started once per
session on a private port and folder (`rspamd_url` in conftest.py): GTUBE is refused, a clean
message passes with the X-Spam headers, and a dead rspamd gives the configured answer."""

from __future__ import annotations

import smtplib
import socket
from typing import Any

import pytest
from support import WAIT

from smtp_core import Config
from smtpkit.handlers import Accept, Handler, HookResult, Message, Pipeline
from smtpkit.handlers.policies import Rspamd, build_policy
from smtpkit.transports import running_server

pytestmark = [pytest.mark.interop, pytest.mark.timeout(180)]

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Keep(Handler):
    received: list[bytes] = []

    def data(self, message: Message) -> HookResult:
        self.received.append(message.read())
        return Accept()


def clean(extra: str = "") -> bytes:
    return (
        "From: Alice <alice@example.org>\r\nTo: Bob <bob@example.net>\r\n"
        "Subject: lunch\r\nMessage-ID: <lunch.1@example.org>\r\n"
        "Date: Tue, 01 Dec 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n{extra}\r\n"
        "Shall we have lunch on Friday at noon? The usual place.\r\n"
    ).encode()


def send(policy: Rspamd, content: bytes) -> tuple[int, bytes]:
    Keep.received = []
    with (
        running_server(Pipeline(policy, deliver=Keep), config=Config(hostname="mx.test")) as srv,
        smtplib.SMTP(srv.host, srv.port, timeout=WAIT) as smtp,
    ):
        smtp.ehlo("localhost")
        smtp.mail("alice@example.org")
        smtp.rcpt("bob@example.net")
        code, text = smtp.data(content)
    return code, text


def test_gtube_is_rejected(rspamd_url: str) -> None:
    code, text = send(Rspamd(rspamd_url), clean().replace(b"Shall", GTUBE.encode() + b"\r\n"))
    assert (code, text) == (554, b"5.7.1 Message rejected as spam")
    assert Keep.received == []


def test_a_clean_message_passes_with_the_headers(rspamd_url: str) -> None:
    forged = "X-Spam-Status: No, score=-100\r\nX-Spam-Flag: NO\r\n"
    code, _ = send(Rspamd(rspamd_url), clean(forged))
    assert code == 250
    (delivered,) = Keep.received
    header = delivered.split(b"\r\n\r\n", 1)[0].decode()
    assert "X-Spam-Action: no action\r\n" in header
    assert "X-Spam-Status: No, score=" in header and "required=" in header
    assert "X-Spam-Score: " in header
    assert "score=-100" not in header and "X-Spam-Flag" not in header  # the forgeries


@pytest.mark.parametrize(("unavailable", "expected"), [("tempfail", 451), ("accept", 250)])
def test_rspamd_down_tempfails_or_accepts(unavailable: str, expected: int) -> None:
    policy = Rspamd(f"http://127.0.0.1:{free_port()}", unavailable=unavailable)
    code, _ = send(policy, clean())
    assert code == expected
    if expected == 250:
        assert b"X-Spam-Status: Unknown, not checked: rspamd unavailable" in Keep.received[0]


def test_too_large_messages_are_not_sent(rspamd_url: str) -> None:
    code, _ = send(Rspamd(rspamd_url, max_scan_size=100), clean())
    assert code == 250
    assert b"X-Spam-Status: Unknown, not checked: message larger than" in Keep.received[0]


def test_from_the_configuration_file(rspamd_url: str) -> None:
    policy: Any = build_policy({"type": "rspamd", "url": rspamd_url, "unavailable": "accept"})
    assert isinstance(policy, Rspamd) and policy.unavailable == "accept"
    code, _ = send(policy, clean().replace(b"Shall", GTUBE.encode() + b"\r\n"))
    assert code == 554
