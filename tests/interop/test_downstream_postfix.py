"""Postfix's smtp-sink as the downstream MTA of the relay: through the CLI
(`smtpkit serve --handler relay`) and through examples/gateway.py.

smtp-sink's options make it refuse commands: -r with a 4xx, -f with a 5xx (the text of -b and
-B), -Q with 421 and a hang-up, -q with a silent hang-up. Each verdict must reach our client
unchanged, at the command that drew it (before-queue).
"""

from __future__ import annotations

import smtplib
from collections.abc import Callable
from typing import Any

import pytest
from support import WAIT

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]

MESSAGE = b"Subject: interop\r\nFrom: a@example.org\r\n\r\nhello postfix\r\n..dotted\r\n"


def relay(smtpkit: Callable[..., Any], sink: Any, *extra: str) -> Any:
    return smtpkit(
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--hostname",
        "relay.example",
        "--handler",
        "relay",
        "--relay",
        f"{sink.host}:{sink.port}",
        *extra,
    )


def connect(server: Any) -> smtplib.SMTP:
    smtp = smtplib.SMTP(server.host, server.port, timeout=WAIT)
    smtp.ehlo("client.example")
    return smtp


def test_message_passes_through_the_cli_relay(smtpkit: Any, smtp_sink: Any) -> None:
    sink = smtp_sink()
    server = relay(smtpkit, sink)
    with connect(server) as smtp:
        smtp.mail("a@example.org", ["BODY=8BITMIME", "SIZE=200"])
        assert smtp.rcpt("b@example.org") == (250, b"2.1.5 Ok")
        assert smtp.rcpt("c@example.net") == (250, b"2.1.5 Ok")
        assert smtp.data(MESSAGE) == (250, b"2.0.0 Ok")  # smtp-sink's own reply
    [dump] = sink.dumps()
    # smtp-sink offers 8BITMIME but not SIZE: only what the downstream offers is passed on.
    assert "X-Mail-Args: <a@example.org> BODY=8BITMIME" in dump
    assert "X-Rcpt-Args: <b@example.org>" in dump
    assert "X-Rcpt-Args: <c@example.net>" in dump
    assert "by relay.example (smtpkit) with ESMTP" in dump
    assert "X-Helo-Args: relay.example" in dump  # --hostname is our EHLO name upstream
    # Dot-stuffing undone by us, redone by smtplib, undone by Postfix: the same text.
    assert "hello postfix\n..dotted\n" in dump.replace("\r\n", "\n")


def test_null_sender_passes_through(smtpkit: Any, smtp_sink: Any) -> None:
    sink = smtp_sink()
    with connect(relay(smtpkit, sink)) as smtp:
        assert smtp.sendmail("", ["b@example.org"], MESSAGE) == {}
    [dump] = sink.dumps()
    assert "X-Mail-Args: <>" in dump


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (("-r", "RCPT"), (450, b"4.3.0 Error: command failed")),
        (("-f", "RCPT"), (500, b"5.3.0 Error: command failed")),
        (
            ("-f", "RCPT", "-B", "550 5.1.1 <b@example.org>: Recipient address rejected"),
            (550, b"5.1.1 <b@example.org>: Recipient address rejected"),
        ),
    ],
)
def test_rcpt_verdicts_pass_back(
    smtpkit: Any, smtp_sink: Any, options: tuple[str, ...], expected: tuple[int, bytes]
) -> None:
    sink = smtp_sink(*options)
    with connect(relay(smtpkit, sink)) as smtp:
        smtp.mail("a@example.org")
        assert smtp.rcpt("b@example.org") == expected


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (("-r", "."), (450, b"4.3.0 Error: command failed")),
        (("-f", "."), (500, b"5.3.0 Error: command failed")),
        (
            ("-r", ".", "-b", "451 4.7.1 Greylisted, come back later"),
            (451, b"4.7.1 Greylisted, come back later"),
        ),
        (("-f", ".", "-B", "554 5.7.1 Spam detected"), (554, b"5.7.1 Spam detected")),
        (("-f", "DATA"), (500, b"5.3.0 Error: command failed")),
    ],
)
def test_data_verdicts_pass_back(
    smtpkit: Any, smtp_sink: Any, options: tuple[str, ...], expected: tuple[int, bytes]
) -> None:
    sink = smtp_sink(*options)
    with connect(relay(smtpkit, sink)) as smtp:
        smtp.mail("a@example.org")
        assert smtp.rcpt("b@example.org")[0] == 250
        assert smtp.data(MESSAGE) == expected
        # And the session carries on: the next message is relayed again.
        assert smtp.mail("a@example.org")[0] == 250


def test_mail_verdict_passes_back(smtpkit: Any, smtp_sink: Any) -> None:
    sink = smtp_sink("-f", "MAIL", "-B", "553 5.7.1 Sender address rejected")
    with connect(relay(smtpkit, sink)) as smtp:
        assert smtp.mail("a@example.org") == (553, b"5.7.1 Sender address rejected")


def test_421_from_the_downstream_ends_the_session(smtpkit: Any, smtp_sink: Any) -> None:
    sink = smtp_sink("-Q", "RCPT")
    smtp = connect(relay(smtpkit, sink))
    smtp.mail("a@example.org")
    code, _ = smtp.rcpt("b@example.org")
    assert code == 421
    with pytest.raises(smtplib.SMTPServerDisconnected):
        smtp.noop()
    smtp.close()


def test_downstream_hanging_up_gives_451(smtpkit: Any, smtp_sink: Any) -> None:
    sink = smtp_sink("-q", "RCPT")
    with connect(relay(smtpkit, sink)) as smtp:
        smtp.mail("a@example.org")
        assert smtp.rcpt("b@example.org") == (451, b"4.4.2 Error: lost connection with relay host")
        smtp.rset()
        assert smtp.mail("a@example.org")[0] == 250  # a fresh connection downstream


def test_unreachable_downstream_gives_451(smtpkit: Any, smtp_sink: Any) -> None:
    sink = smtp_sink()
    server = relay(smtpkit, sink)
    sink.proc.terminate()
    sink.proc.wait(10)
    with connect(server) as smtp:
        assert smtp.mail("a@example.org") == (451, b"4.4.1 Error: relay host unavailable")


def test_gateway_example_in_front_of_smtp_sink(smtpkit: Any, smtp_sink: Any, tmp_path: Any) -> None:
    sink = smtp_sink("-f", "RCPT", "-B", "550 5.1.1 Recipient address rejected: User unknown")
    users = tmp_path / "users"
    users.write_text("alice:wonderland\n")
    gw = smtpkit(
        "--listen",
        "127.0.0.1:0",
        "--downstream",
        f"{sink.host}:{sink.port}",
        "--local-domains",
        "example.org",
        "--users",
        str(users),
        "--auth-allow-plaintext",
        script="gateway.py",
    )
    with connect(gw) as smtp:
        smtp.mail("a@elsewhere.example")
        # The gateway's own policy first, then the downstream's verdict.
        assert smtp.rcpt("x@elsewhere.example")[0] == 554  # the gateway: no open relay
        assert smtp.rcpt("b@example.org") == (
            550,
            b"5.1.1 Recipient address rejected: User unknown",
        )
    accepting = smtp_sink()
    gw = smtpkit(
        "--listen",
        "127.0.0.1:0",
        "--downstream",
        f"{accepting.host}:{accepting.port}",
        "--local-domains",
        "example.org",
        "--users",
        str(users),
        "--auth-allow-plaintext",
        script="gateway.py",
    )
    with connect(gw) as smtp:
        smtp.login("alice", "wonderland")
        assert smtp.sendmail("alice@example.org", ["friend@elsewhere.example"], MESSAGE) == {}
    [dump] = accepting.dumps()
    assert "X-Rcpt-Args: <friend@elsewhere.example>" in dump
    assert "with ESMTPA" in dump
