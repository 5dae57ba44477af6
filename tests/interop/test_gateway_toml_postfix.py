"""examples/gateway.toml, run by `smtpkit serve --config`, in front of a real Postfix (the
private instance of conftest.py, which takes mail for example.org only). The gateway relays for
its networks and for authenticated users, and refuses every other client 554 5.7.1 at RCPT."""

from __future__ import annotations

import smtplib
from pathlib import Path
from typing import Any

import pytest
from support import ROOT, WAIT

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]

MESSAGE = b"Subject: through the toml gateway\r\nFrom: a@elsewhere.example\r\n\r\nhello\r\n"


@pytest.fixture
def gateway(smtpkit: Any, postfix: Any, dns_stub: Any, tmp_path: Path) -> Any:
    """The example file with local values: its own port, the DNS stub, a users file, and
    example.org (Postfix's domain) as a domain the gateway relays to, not one of its own."""
    (tmp_path / "users").write_text("alice:wonderland\n")
    host, port = dns_stub.address
    edits = {
        'listen = ["0.0.0.0:25"]': 'listen = ["127.0.0.1:0"]',
        'dns_servers = ["127.0.0.1:53"]': f'dns_servers = ["{host}:{port}"]',
        "/etc/smtpkit/users": str(tmp_path / "users"),
        'networks = ["10.0.0.0/8"]': 'networks = ["127.0.0.2/32"]',
        'domains = ["example.org"]': 'domains = ["example.net"]',
        'host = "mx.internal.example.org"': f'host = "{postfix.host}"',
        "port = 25": f"port = {postfix.port}",
    }
    text = (ROOT / "examples" / "gateway.toml").read_text()
    for old, new in edits.items():
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    config = tmp_path / "gateway.toml"
    config.write_text(text)
    return smtpkit("serve", "--config", str(config))


def connect(server: Any, source: str = "127.0.0.1") -> smtplib.SMTP:
    smtp = smtplib.SMTP(server.host, server.port, timeout=WAIT, source_address=(source, 0))
    smtp.ehlo("client.example")
    return smtp


def test_other_clients_get_554_at_rcpt(gateway: Any, dns_stub: Any) -> None:
    with connect(gateway) as smtp:
        assert smtp.mail("a@elsewhere.example")[0] == 250
        assert smtp.rcpt("bob@example.org") == (
            554,
            b"5.7.1 <bob@example.org>: Relay access denied",
        )
    # Every check of the file ran: the DNSBL for the client, the RHSBL for the sender.
    assert "1.0.0.127.zen.spamhaus.org" in dns_stub.queries
    assert "elsewhere.example.dbl.spamhaus.org" in dns_stub.queries


def test_relays_for_its_networks(gateway: Any, postfix: Any) -> None:
    before = len(postfix.delivered("bob", 0))
    with connect(gateway, "127.0.0.2") as smtp:
        assert smtp.sendmail("a@elsewhere.example", ["bob@example.org"], MESSAGE) == {}
    message = postfix.delivered("bob", before + 1)[-1]
    assert "through the toml gateway" in message
    assert "by mx.example.org (smtpkit)" in message


def test_relays_for_authenticated_users(gateway: Any, postfix: Any) -> None:
    before = len(postfix.delivered("carol", 0))
    with connect(gateway) as smtp:
        with pytest.raises(smtplib.SMTPAuthenticationError):
            smtp.login("alice", "wrong")
        smtp.login("alice", "wonderland")
        assert smtp.sendmail("alice@example.net", ["carol@example.org"], MESSAGE) == {}
        # Postfix's own verdicts still reach the client.
        smtp.mail("alice@example.net")
        assert smtp.rcpt("nobody@example.org")[0] == 550
    assert len(postfix.delivered("carol", before + 1)) == before + 1
