"""The MTA of examples/mta.toml in front of a real Dovecot LMTP server (Debian's dovecot-lmtpd,
installed by scripts/setup-test): a private instance on a free port, with its own folder, run
by the test. Our users' mail reaches their Dovecot Maildirs; unknown users get 550 5.1.1 at RCPT;
more than one recipient in a transaction gets 452 4.5.3, and the client sends it again."""

from __future__ import annotations

import re
import smtplib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support import ROOT, WAIT

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]

MESSAGE = b"Subject: to dovecot\r\nFrom: a@elsewhere.example\r\n\r\nhello dovecot\r\n"


@pytest.fixture
def mta(smtpkit: Callable[..., Any], dovecot: Any, tmp_path: Path) -> Any:
    """examples/mta.toml, pointed at the private Dovecot and a recipients file."""
    (tmp_path / "recipients").write_text("# our users\nalice@example.org\nbob@example.org\n")
    text = (ROOT / "examples" / "mta.toml").read_text()
    text = text.replace('listen = ["127.0.0.1:10025"]', 'listen = ["127.0.0.1:0"]')
    text = text.replace("/etc/smtpkit/recipients", str(tmp_path / "recipients"))
    text = re.sub(r"(?m)^port = 24$", f"port = {dovecot.port}", text)
    assert str(dovecot.port) in text and str(tmp_path) in text
    config = tmp_path / "mta.toml"
    config.write_text(text)
    return smtpkit("serve", "--config", str(config))


def connect(server: Any) -> smtplib.SMTP:
    smtp = smtplib.SMTP(server.host, server.port, timeout=WAIT)
    smtp.ehlo("gateway.example")
    return smtp


def test_our_users_mail_reaches_dovecot(mta: Any, dovecot: Any) -> None:
    before = len(dovecot.delivered("alice", 0))
    with connect(mta) as smtp:
        smtp.mail("a@elsewhere.example")
        assert smtp.rcpt("Alice+lists@example.org")[0] == 250
        code, text = smtp.data(MESSAGE)
    assert code == 250
    assert b"Saved" in text  # Dovecot's own verdict
    messages = dovecot.delivered("alice", before + 1)
    assert len(messages) == before + 1
    assert b"hello dovecot" in messages[-1]
    assert b"by mail.example.org (smtpkit)" in messages[-1]


def test_unknown_users_get_550_5_1_1(mta: Any) -> None:
    with connect(mta) as smtp:
        smtp.mail("a@elsewhere.example")
        assert smtp.rcpt("nobody@example.org") == (
            550,
            b"5.1.1 <nobody@example.org>: Recipient address rejected: User unknown",
        )
        assert smtp.rcpt("friend@elsewhere.example") == (
            554,
            b"5.7.1 <friend@elsewhere.example>: Relay access denied",
        )


def test_one_recipient_per_transaction_loses_nothing(mta: Any, dovecot: Any) -> None:
    alice = len(dovecot.delivered("alice", 0))
    bob = len(dovecot.delivered("bob", 0))
    with connect(mta) as smtp:
        refused = smtp.sendmail("a@elsewhere.example", ["alice@example.org"], MESSAGE)
        assert refused == {}
        smtp.mail("a@elsewhere.example")
        assert smtp.rcpt("alice@example.org")[0] == 250
        code, text = smtp.rcpt("bob@example.org")
        assert (code, text[:5]) == (452, b"4.5.3")  # send it again, in a new transaction
        assert smtp.data(MESSAGE)[0] == 250
        assert smtp.sendmail("a@elsewhere.example", ["bob@example.org"], MESSAGE) == {}
    assert len(dovecot.delivered("alice", alice + 2)) == alice + 2
    assert len(dovecot.delivered("bob", bob + 1)) == bob + 1
