"""examples/gateway.toml, the whole anti-spam gateway, run by `smtpkit serve --config` in front
of a real Postfix (the private instance of conftest.py), with a real rspamd and the DNS stub.

The test copies the file with local paths and values, and gives the listener and the relay
host on the command line (which wins over the file), as docs/examples.md does. Here
example.net is the gateway's own domain (anyone may send to it) and example.org another one
(relayed only for the gateway's network, 127.0.0.2, and for users who logged in); Postfix
holds the mailboxes of both. What each client sees:

- a blocklisted or DNS-listed client: 421 at connect;
- AUTH before STARTTLS: 538 5.7.11; after it, a wrong password 535, a right one relays;
- another client writing to example.org: 554 5.7.1 at RCPT (no open relay);
- a sender whose SPF fails: 550 at MAIL; a forged From: of a p=reject domain: 550 5.7.1;
- GTUBE: 554 5.7.1 at the end of data (rspamd);
- a first-time triplet to example.net: 451 4.7.1, then accepted once the delay has passed;
- what passes reaches Postfix's Maildir with Authentication-Results: and the X-Spam headers.
"""

from __future__ import annotations

import base64
import smtplib
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from support import ROOT, WAIT

pytestmark = [pytest.mark.interop, pytest.mark.timeout(240)]

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
NETWORK = "127.0.0.2"  # the gateway's own network (relay-control and greylist exempt)
BLOCKED = "127.0.0.3"  # in the blocklist file
LISTED = "127.0.0.4"  # listed by the DNSBL
#: The values of the example that the test replaces: each must be in the file exactly once.
LOCAL_VALUES = {
    'user = "smtpkit"': '# user = "smtpkit"',  # the test runs as root and stays so
    'networks = ["10.0.0.0/8"]': f'networks = ["{NETWORK}/32"]',
    'exempt = ["10.0.0.0/8"]': f'exempt = ["{NETWORK}/32"]',
    'domains = ["example.org"]': 'domains = ["example.net"]',
    "delay = 300": "delay = 1",
}


def message(sender: str, body: str = "Shall we have lunch on Friday at noon?") -> bytes:
    """A plain, well-formed message that rspamd scores as clean."""
    return (
        f"From: <{sender}>\r\nTo: <someone@example.org>\r\nSubject: lunch\r\n"
        f"Message-ID: <{time.monotonic_ns()}@{sender.partition('@')[2]}>\r\n"
        "Date: Tue, 01 Dec 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n"
        f"{body}\r\nThe usual place.\r\n"
    ).encode()


@pytest.fixture(scope="module")
def dkim_key() -> tuple[bytes, str]:
    """A 1024-bit RSA key for d=example.net: the PEM dkimpy signs with, and its DNS record
    (short enough for one TXT string)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, f"v=DKIM1; k=rsa; p={base64.b64encode(public).decode()}"


@pytest.fixture
def config(tmp_path: Path, dns_stub: Any, rspamd_url: str, tls_files: dict[str, Path]) -> Path:
    """The example with this test's files: blocklist, users, TLS, state, DNS and rspamd."""
    (tmp_path / "blocked.cidr").write_text(f"# the test's blocklist\n{BLOCKED}\n")
    (tmp_path / "users").write_text("alice:wonderland\n")
    host, port = dns_stub.address
    edits = {
        **LOCAL_VALUES,
        "/etc/smtpkit/fullchain.pem": str(tls_files["cert"]),
        "/etc/smtpkit/privkey.pem": str(tls_files["key"]),
        'dns_servers = ["127.0.0.1:53"]': f'dns_servers = ["{host}:{port}"]',
        "/etc/smtpkit/blocked.cidr": str(tmp_path / "blocked.cidr"),
        "/etc/smtpkit/users": str(tmp_path / "users"),
        '"http://127.0.0.1:11333"': f'"{rspamd_url}"',
        "/var/lib/smtpkit/state.sqlite": str(tmp_path / "state.sqlite"),
    }
    text = (ROOT / "examples" / "gateway.toml").read_text()
    for old, new in edits.items():
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


@pytest.fixture
def gateway(smtpkit: Any, postfix: Any, dns_stub: Any, config: Path, dkim_key: Any) -> Any:
    """The gateway, listening and relaying where the command line says, and the DNS of
    example.net: SPF allows its network only, its mail is DKIM-signed, DMARC p=reject."""
    dns_stub.records[("example.net", "TXT")] = [f'"v=spf1 ip4:{NETWORK} -all"']
    dns_stub.records[("mail._domainkey.example.net", "TXT")] = [f'"{dkim_key[1]}"']
    dns_stub.records[("_dmarc.example.net", "TXT")] = ['"v=DMARC1; p=reject"']
    dns_stub.listed.add(".".join(reversed(LISTED.split("."))) + ".zen.spamhaus.org")
    relay = f"{postfix.host}:{postfix.port}"
    return smtpkit("serve", "--config", str(config), "--listen", "127.0.0.1:0", "--relay", relay)


def connect(server: Any, source: str = "127.0.0.1") -> smtplib.SMTP:
    smtp = smtplib.SMTP(server.host, server.port, timeout=WAIT, source_address=(source, 0))
    smtp.ehlo("client.example")
    return smtp


def header_of(delivered: str) -> str:
    return delivered.split("\n\n", 1)[0]


def assert_checked(delivered: str, *results: str) -> None:
    """The gateway's verdicts are in the header Postfix stored: Authentication-Results: with
    `results`, and rspamd's X-Spam headers."""
    header = header_of(delivered)
    assert "by mx.example.org (smtpkit)" in header
    assert header.count("Authentication-Results: mx.example.org;") == 1
    for result in results:
        assert result in header
    assert "X-Spam-Status: No, score=" in header
    assert "X-Spam-Action: no action" in header


def test_the_file_passes_check_config(config: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "smtpkit", "check-config", str(config)],
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert (done.returncode, done.stdout) == (0, f"{config}: ok\n"), done.stderr


def test_blocked_and_listed_clients_get_421(gateway: Any, dns_stub: Any) -> None:
    for source, why in [(BLOCKED, "blocked"), (LISTED, "blocked using zen.spamhaus.org")]:
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            connect(gateway, source)
        assert refused.value.smtp_code == 421
        assert f"client host [{source}] {why}".encode() in refused.value.smtp_error


def test_other_clients_get_554_at_rcpt(gateway: Any, dns_stub: Any) -> None:
    with connect(gateway) as smtp:
        assert smtp.mail("a@elsewhere.example")[0] == 250
        assert smtp.rcpt("bob@example.org") == (
            554,
            b"5.7.1 <bob@example.org>: Relay access denied",
        )
    assert "1.0.0.127.zen.spamhaus.org" in dns_stub.queries  # the DNSBL was asked


def test_relays_for_its_network(gateway: Any, postfix: Any, dkim_key: Any) -> None:
    before = len(postfix.delivered("bob", 0))
    content = message("app@example.net")
    signed = dkim.sign(content, b"mail", b"example.net", dkim_key[0]) + content
    with connect(gateway, NETWORK) as smtp:  # exempt from greylisting: through at once
        assert smtp.sendmail("app@example.net", ["bob@example.org"], signed) == {}
    delivered = postfix.delivered("bob", before + 1)[-1]
    assert_checked(
        delivered,
        "spf=pass smtp.mailfrom=app@example.net",
        "dkim=pass header.d=example.net header.s=mail",
        "dmarc=pass header.from=example.net",
    )


def test_auth_needs_tls_then_relays_for_users(gateway: Any, postfix: Any, tls: Any) -> None:
    before = len(postfix.delivered("carol", 0))
    with connect(gateway) as smtp:
        assert not smtp.has_extn("auth")
        assert smtp.docmd("AUTH", "PLAIN AGFsaWNlAHdvbmRlcmxhbmQ=") == (
            538,
            b"5.7.11 Error: must issue a STARTTLS command first",
        )
        smtp.starttls(context=tls.client)
        smtp.ehlo("client.example")
        with pytest.raises(smtplib.SMTPAuthenticationError):
            smtp.login("alice", "wrong")
        smtp.login("alice", "wonderland")
        assert smtp.sendmail("alice@example.net", ["carol@example.org"], message("a@x")) == {}
        # Postfix's own verdicts still reach the client.
        smtp.mail("alice@example.net")
        assert smtp.rcpt("nobody@example.org")[0] == 550
    assert_checked(postfix.delivered("carol", before + 1)[-1])


def test_spf_fail_is_refused_at_mail(gateway: Any) -> None:
    with connect(gateway) as smtp:  # example.net's SPF allows its network only
        assert smtp.mail("ceo@example.net") == (
            550,
            b"5.7.23 <ceo@example.net>: SPF fail: 127.0.0.1 may not send for example.net",
        )


def test_a_forged_from_of_a_reject_domain_is_refused(gateway: Any) -> None:
    forged = message("ceo@example.net")  # not signed, sent from elsewhere.example
    with connect(gateway, NETWORK) as smtp, pytest.raises(smtplib.SMTPDataError) as refused:
        smtp.sendmail("a@elsewhere.example", ["bob@example.org"], forged)
    assert (refused.value.smtp_code, refused.value.smtp_error) == (
        550,
        b"5.7.1 Email rejected per DMARC policy for example.net",
    )


def test_gtube_is_rejected_by_rspamd(gateway: Any, postfix: Any) -> None:
    before = len(postfix.delivered("bob", 0))
    with connect(gateway, NETWORK) as smtp:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            smtp.sendmail("a@elsewhere.example", ["bob@example.org"], message("a@x", GTUBE))
        assert (refused.value.smtp_code, refused.value.smtp_error) == (
            554,
            b"5.7.1 Message rejected as spam",
        )
        assert smtp.sendmail("a@elsewhere.example", ["bob@example.org"], message("a@x")) == {}
    # The clean message arrived after the refused one was sent: the refused one never will.
    delivered = postfix.delivered("bob", before + 1)
    assert len(delivered) == before + 1
    assert not any(GTUBE in text for text in delivered)


def test_a_new_triplet_is_greylisted_then_accepted(gateway: Any, postfix: Any) -> None:
    before = len(postfix.delivered("dave", 0))
    with connect(gateway) as smtp:
        assert smtp.mail("friend@elsewhere.example")[0] == 250
        assert smtp.rcpt("dave@example.net") == (
            451,
            b"4.7.1 <dave@example.net>: Recipient address rejected: "
            b"Greylisted, try again in 1 seconds",
        )
        # Retried as an MTA retries, until the delay (1 s here) has passed.
        deadline = time.monotonic() + WAIT
        while (reply := smtp.rcpt("dave@example.net"))[0] == 451:
            assert time.monotonic() < deadline, reply
            time.sleep(0.1)
        assert reply[0] == 250, reply
        assert smtp.data(message("friend@elsewhere.example"))[0] == 250
    assert_checked(postfix.delivered("dave", before + 1)[-1], "spf=none")


def test_the_docs_show_the_file() -> None:
    docs = (ROOT / "docs" / "examples.md").read_text()
    shown = docs.split("### The file\n\n```toml\n", 1)[1].split("```\n", 1)[0]
    assert shown == (ROOT / "examples" / "gateway.toml").read_text()
