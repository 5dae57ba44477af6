"""examples/gateway.py in front of a real Postfix (a private instance: smtpd, cleanup, qmgr,
virtual delivery), as docs/examples.md sets it up. The client's verdicts are Postfix's, at the
command that drew them: a message reaches a Postfix Maildir, and 4xx and 5xx verdicts at RCPT,
at MAIL and after the message pass back unchanged."""

from __future__ import annotations

import re
import smtplib
from pathlib import Path
from typing import Any

import pytest
from support import WAIT

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]

MESSAGE = b"Subject: through the gateway\r\nFrom: a@elsewhere.example\r\n\r\nhello postfix\r\n"


@pytest.fixture
def gateway(smtpkit: Any, postfix: Any, tmp_path: Path) -> Any:
    users = tmp_path / "users"
    users.write_text("alice:wonderland\n")
    return smtpkit(
        "--listen",
        "127.0.0.1:0",
        "--hostname",
        "gw.example",
        "--downstream",
        f"{postfix.host}:{postfix.port}",
        "--local-domains",
        "example.org",
        "--users",
        str(users),
        "--auth-allow-plaintext",
        script="gateway.py",
    )


def connect(server: Any) -> smtplib.SMTP:
    smtp = smtplib.SMTP(server.host, server.port, timeout=WAIT)
    smtp.ehlo("client.example")
    return smtp


def test_message_reaches_the_postfix_maildir(gateway: Any, postfix: Any) -> None:
    before = len(postfix.delivered("bob", 0))
    with connect(gateway) as smtp:
        smtp.mail("a@elsewhere.example")
        assert smtp.rcpt("bob@example.org") == (250, b"2.1.5 Ok")
        code, text = smtp.data(MESSAGE)
    assert code == 250
    # Postfix's queue ID; the relay sends BDAT to it, so Postfix says "Ok: N bytes queued as".
    assert re.fullmatch(rb"2\.0\.0 Ok: (\d+ bytes )?queued as [0-9A-F]+", text), text
    messages = postfix.delivered("bob", before + 1)
    assert len(messages) == before + 1
    message = messages[-1]
    assert "by gw.example (smtpkit) with ESMTP" in message
    assert "by postfix.example (Postfix) with ESMTPS" in message  # STARTTLS to Postfix
    assert "Received: from gw.example (" in message  # the gateway's EHLO name
    assert "hello postfix" in message
    queue_id = text.decode().rsplit(" ", 1)[1]
    assert f"{queue_id}: to=<bob@example.org>" in postfix.log()


def test_unknown_user_is_refused_at_rcpt(gateway: Any) -> None:
    with connect(gateway) as smtp:
        smtp.mail("a@elsewhere.example")
        assert smtp.rcpt("nobody@example.org") == (
            550,
            b"5.1.1 <nobody@example.org>: Recipient address rejected: "
            b"User unknown in virtual mailbox table",
        )
        assert smtp.rcpt("busy@example.org") == (
            450,
            b"4.2.1 <busy@example.org>: Recipient address rejected: Mailbox busy",
        )


def test_relay_refused_by_postfix_reaches_the_authenticated_client(gateway: Any) -> None:
    with connect(gateway) as smtp:
        smtp.login("alice", "wonderland")  # the gateway lets alice relay; Postfix does not
        smtp.mail("alice@example.org")
        assert smtp.rcpt("friend@elsewhere.example") == (
            554,
            b"5.7.1 <friend@elsewhere.example>: Relay access denied",
        )


def test_verdicts_after_the_message(gateway: Any) -> None:
    with connect(gateway) as smtp:
        smtp.mail("a@elsewhere.example")
        smtp.rcpt("carol@example.org")
        assert smtp.data(b"Subject: reject-me\r\n\r\nspam\r\n") == (
            550,
            b"5.7.1 spam is not welcome",
        )
        smtp.mail("later@elsewhere.example")
        smtp.rcpt("carol@example.org")
        assert smtp.data(MESSAGE) == (
            451,
            b"4.7.1 <later@elsewhere.example>: Sender address rejected: Try again later",
        )
        # Postfix holds the transaction after that refusal: the relay RSETs it for us.
        assert smtp.mail("a@elsewhere.example")[0] == 250
        assert smtp.rcpt("carol@example.org")[0] == 250
        code, text = smtp.data(MESSAGE + b"x" * 250_000 + b"\r\n")
        assert (code, text[:5]) == (552, b"5.3.4")
        # A declared SIZE over Postfix's limit is refused at MAIL already.
        assert smtp.mail("a@elsewhere.example", ["SIZE=300000"])[0] == 552
        # The session is still good.
        smtp.rset()
        assert smtp.sendmail("a@elsewhere.example", ["carol@example.org"], MESSAGE) == {}


def test_smtputf8_through_to_postfix(gateway: Any, postfix: Any) -> None:
    before = len(postfix.delivered("bob", 0))
    with connect(gateway) as smtp:
        smtp.command_encoding = "utf-8"
        assert smtp.docmd("MAIL", "FROM:<jos\u00e9@elsewhere.example> SMTPUTF8")[0] == 250
        assert smtp.docmd("RCPT", "TO:<bob@example.org>")[0] == 250
        assert smtp.data("Subject: caf\u00e9\r\n\r\nh\u00e9llo\r\n".encode())[0] == 250
    message = postfix.delivered("bob", before + 1)[-1]
    assert "h\u00e9llo" in message
    assert "jos\u00e9@elsewhere.example" in message  # Return-Path: Postfix took the UTF-8 sender
