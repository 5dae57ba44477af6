"""The ready policies, each in a Pipeline in front of a real server, and their TOML tables."""

from __future__ import annotations

import ipaddress
import smtplib
import socket
from pathlib import Path
from typing import Any, ClassVar

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)
from support import WAIT

from smtp_core import Config
from smtpkit.handlers import (
    Accept,
    Handler,
    HookResult,
    MaildirDelivery,
    Pipeline,
    Policy,
    RcptParams,
    Reject,
    SinkHandler,
)
from smtpkit.handlers.policies import (
    POLICY_TYPES,
    CidrAllowlist,
    CidrBlocklist,
    ConfigError,
    Dnsbl,
    Networks,
    PasswordAuth,
    PasswordFile,
    RecipientDomains,
    RecipientTable,
    RelayControl,
    RequireAuth,
    RequireTls,
    Rhsbl,
    SenderDomains,
    build_policy,
    dnsbl_name,
)
from smtpkit.transports import running_server

pytestmark = pytest.mark.timeout(60)
PLAINTEXT_AUTH = Config(auth_allow_plaintext=True)


def greeting(server: Any, source: str = "127.0.0.1") -> tuple[bytes, bytes]:
    """(the greeting line, what follows it before the server closes or 1 s passes)."""
    sock = socket.create_connection(
        (server.host, server.port), timeout=WAIT, source_address=(source, 0)
    )
    with sock:
        first = sock.recv(4096)
        sock.settimeout(1.0)
        try:
            rest = sock.recv(4096)
        except TimeoutError:
            rest = b"(still open)"
        return first, rest


def client(server: Any, source: str = "127.0.0.1") -> smtplib.SMTP:
    smtp = smtplib.SMTP(server.host, server.port, timeout=WAIT, source_address=(source, 0))
    smtp.ehlo("client.example")
    return smtp


# ---------------------------------------------------------------------------------- Networks


def test_networks_membership() -> None:
    nets = Networks(["10.0.0.0/8", "192.0.2.7", "2001:db8::/32", "::ffff:198.51.100.0/120"])
    assert "10.255.0.1" in nets
    assert "11.0.0.1" not in nets
    assert "192.0.2.7" in nets and "192.0.2.8" not in nets
    assert "2001:db8:1::5" in nets and "2001:db9::1" not in nets
    assert "::ffff:10.1.2.3" in nets  # IPv4-mapped, from a dual-stack listener
    assert "198.51.100.9" in nets  # the mapped network is an IPv4 network
    assert ipaddress.ip_address("10.0.0.1") in nets
    assert "not an address" not in nets and "" not in nets and None not in nets
    assert len(nets) == 4 and bool(nets) and not Networks()
    assert "10.0.0.0/8" in repr(nets)


def test_networks_load(tmp_path: Path) -> None:
    path = tmp_path / "blocked"
    path.write_text("# spammers\n203.0.113.0/24   # a whole /24\n\n198.51.100.7\n2001:db8::/48\n")
    nets = Networks.load(path)
    assert "203.0.113.99" in nets and "198.51.100.7" in nets and "2001:db8::1" in nets
    path.write_text("10.0.0.0/8\nnonsense\n")
    with pytest.raises(ValueError, match=r"blocked:2"):
        Networks.load(path)


# ---------------------------------------------------------------------------------- CIDR lists


def test_blocklisted_client_gets_421_and_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "blocked"
    path.write_text("127.0.0.2/32\n")
    with running_server(Pipeline(CidrBlocklist.load(path), deliver=SinkHandler)) as server:
        first, rest = greeting(server, source="127.0.0.2")
        assert first.startswith(b"421 ")
        assert b"Error: client host [127.0.0.2] blocked" in first
        assert rest == b""  # closed
        first, rest = greeting(server, source="127.0.0.1")
        assert first.startswith(b"220 ")
        assert rest == b"(still open)"


def test_an_allowlist_before_the_blocklist_exempts_its_clients() -> None:
    pipeline = Pipeline(
        CidrAllowlist(["127.0.0.3/32"]), CidrBlocklist(["127.0.0.0/8"]), deliver=SinkHandler
    )
    with running_server(pipeline) as server:
        assert greeting(server, source="127.0.0.3")[0].startswith(b"220 ")
        assert greeting(server, source="127.0.0.4")[0].startswith(b"421 ")


# ---------------------------------------------------------------------------------- DNS lists


def test_dnsbl_name() -> None:
    assert dnsbl_name("127.0.0.2", "zen.example.") == "2.0.0.127.zen.example"
    assert dnsbl_name("::ffff:192.0.2.1", "bl.test") == "1.2.0.192.bl.test"
    v6 = dnsbl_name("2001:db8::1", "bl.test")
    assert v6.startswith("1.0.0.0.") and v6.endswith(".8.b.d.0.1.0.0.2.bl.test")
    assert len(v6.split(".")) == 32 + 2


def servers(stub: Any) -> list[str]:
    host, port = stub.address
    return [f"{host}:{port}"]


def test_dnsbl_listed_client_is_dropped(dns_stub: Any) -> None:
    dns_stub.listed.add("2.0.0.127.bl.test")
    dnsbl = Dnsbl("bl.test", dns_servers=servers(dns_stub), timeout=2.0)
    with running_server(Pipeline(dnsbl, deliver=SinkHandler)) as server:
        first, rest = greeting(server, source="127.0.0.2")
        assert first.startswith(b"421 ")
        assert b"blocked using bl.test" in first
        assert rest == b""
        first, _ = greeting(server, source="127.0.0.1")
        assert first.startswith(b"220 ")
    assert dns_stub.queries == ["2.0.0.127.bl.test", "1.0.0.127.bl.test"]


def test_dnsbl_checks_each_zone(dns_stub: Any) -> None:
    dns_stub.listed.add("3.0.0.127.second.test")
    dnsbl = Dnsbl("first.test", "second.test", dns_servers=servers(dns_stub), timeout=2.0)
    with running_server(Pipeline(dnsbl, deliver=SinkHandler)) as server:
        assert greeting(server, source="127.0.0.3")[0].startswith(b"421 ")
    assert dns_stub.queries == ["3.0.0.127.first.test", "3.0.0.127.second.test"]


def test_dnsbl_failure_lets_the_client_in(dns_stub: Any) -> None:
    dns_stub.silent = True
    dns_stub.listed.add("2.0.0.127.bl.test")
    dnsbl = Dnsbl("bl.test", dns_servers=servers(dns_stub), timeout=0.3)
    with running_server(Pipeline(dnsbl, deliver=SinkHandler)) as server:
        assert greeting(server, source="127.0.0.2")[0].startswith(b"220 ")


def test_dnsbl_error_codes_are_not_listings(dns_stub: Any, monkeypatch: Any) -> None:
    import dns.resolver

    class Record:
        def to_text(self) -> str:
            return "127.255.255.254"  # "you are using a public resolver"

    monkeypatch.setattr(dns.resolver.Resolver, "resolve", lambda *args, **kw: [Record()])
    dnsbl = Dnsbl("bl.test", dns_servers=servers(dns_stub), timeout=2.0)
    assert not dnsbl.listed("2.0.0.127.bl.test", "bl.test")


def test_rhsbl_refuses_listed_sender_domains(dns_stub: Any) -> None:
    dns_stub.listed.add("spam.example.dbl.test")
    rhsbl = Rhsbl("dbl.test", dns_servers=servers(dns_stub), timeout=2.0)
    with running_server(Pipeline(rhsbl, deliver=SinkHandler)) as server, client(server) as smtp:
        assert smtp.mail("x@Spam.Example") == (
            554,
            b"5.7.1 <x@Spam.Example>: Sender address rejected: domain listed by dbl.test",
        )
        assert smtp.mail("x@ok.example")[0] == 250
        smtp.rset()
        assert smtp.mail("")[0] == 250  # bounces are not looked up
    assert dns_stub.queries == ["spam.example.dbl.test", "ok.example.dbl.test"]


# ---------------------------------------------------------------------------------- TLS, AUTH


def test_require_tls_before_starttls(tls: Any) -> None:
    pipeline = Pipeline(RequireTls(), deliver=SinkHandler)
    with running_server(pipeline, ssl_context=tls.server) as server, client(server) as smtp:
        assert smtp.mail("a@example.org") == (530, b"5.7.0 Must issue a STARTTLS command first")
        smtp.starttls(context=tls.client)
        smtp.ehlo("client.example")
        assert smtp.mail("a@example.org")[0] == 250


def test_require_auth() -> None:
    pipeline = Pipeline(PasswordAuth({"alice": "wonderland"}), RequireAuth(), deliver=SinkHandler)
    with running_server(pipeline, config=PLAINTEXT_AUTH) as server, client(server) as smtp:
        assert smtp.mail("a@example.org") == (530, b"5.7.0 Authentication required")
        smtp.login("alice", "wonderland")
        assert smtp.mail("a@example.org")[0] == 250


def test_password_auth_offers_and_checks() -> None:
    pipeline = Pipeline(PasswordAuth(PasswordFile({"alice": "wonderland"})), deliver=SinkHandler)
    with running_server(pipeline, config=PLAINTEXT_AUTH) as server, client(server) as smtp:
        assert "PLAIN" in smtp.esmtp_features["auth"]
        with pytest.raises(smtplib.SMTPAuthenticationError) as err:
            smtp.login("alice", "wrong")
        assert err.value.smtp_code == 535
        smtp.login("alice", "wonderland")


def test_no_auth_policy_no_auth_offered() -> None:
    pipeline = Pipeline(RequireAuth(), deliver=SinkHandler)
    with running_server(pipeline, config=PLAINTEXT_AUTH) as server, client(server) as smtp:
        assert not smtp.has_extn("auth")


def test_an_unknown_user_is_left_to_the_next_auth() -> None:
    class Robots(Handler):
        """Has the last word: knows its robot, and trusts the policies for alice."""

        def auth(self, user: str, password: str) -> HookResult:
            return (
                Accept() if user == "alice" or (user, password) == ("robot", "token") else Reject()
            )

    pipeline = Pipeline(PasswordAuth({"alice": "wonderland"}), deliver=Robots)
    with running_server(pipeline, config=PLAINTEXT_AUTH) as server:
        for user, password in (("alice", "wonderland"), ("robot", "token")):
            with client(server) as smtp:
                smtp.login(user, password)
        with client(server) as smtp, pytest.raises(smtplib.SMTPAuthenticationError):
            smtp.login("alice", "token")  # a known user: refused, not handed over


# ---------------------------------------------------------------------------------- relay control


class Recorder(Handler):
    accepted: ClassVar[list[str]] = []
    delivers_onward: ClassVar[bool] = True

    def rcpt(self, recipient: str, params: RcptParams) -> HookResult:
        self.accepted.append(recipient)
        return Accept()


def test_no_open_relay() -> None:
    Recorder.accepted = []
    pipeline = Pipeline(
        PasswordAuth({"alice": "wonderland"}),
        RelayControl(domains=["example.org"]),
        deliver=Recorder,
    )
    with running_server(pipeline, config=PLAINTEXT_AUTH) as server:
        with client(server) as smtp:
            smtp.mail("someone@elsewhere.example")
            assert smtp.rcpt("bob@example.org")[0] == 250  # ours
            assert smtp.rcpt("POSTMASTER")[0] == 250
            assert smtp.rcpt("bob@Example.ORG.")[0] == 250
            assert smtp.rcpt("victim@elsewhere.example") == (
                554,
                b"5.7.1 <victim@elsewhere.example>: Relay access denied",
            )
        with client(server) as smtp:  # loopback is not trusted unless listed
            smtp.login("alice", "wonderland")
            smtp.mail("alice@example.org")
            assert smtp.rcpt("friend@elsewhere.example")[0] == 250  # authenticated
    assert Recorder.accepted == [
        "bob@example.org",
        "POSTMASTER",
        "bob@Example.ORG.",
        "friend@elsewhere.example",
    ]


def test_relay_from_its_networks_only() -> None:
    pipeline = Pipeline(RelayControl(networks=["127.0.0.2/32"]), deliver=Recorder)
    with running_server(pipeline) as server:
        with client(server, "127.0.0.2") as smtp:
            smtp.mail("a@example.org")
            assert smtp.rcpt("friend@elsewhere.example")[0] == 250
        with client(server) as smtp:
            smtp.mail("a@example.org")
            assert smtp.rcpt("friend@elsewhere.example")[0] == 554


# ---------------------------------------------------------------------------------- addresses


def test_sender_and_recipient_domains() -> None:
    pipeline = Pipeline(
        SenderDomains(deny=[".spam.example", "bad.example"]),
        RecipientDomains(allow=["example.org"]),
        deliver=SinkHandler,
    )
    with running_server(pipeline) as server, client(server) as smtp:
        assert smtp.mail("a@mx.spam.example")[0] == 554
        assert smtp.mail("a@bad.example")[0] == 554
        assert smtp.mail("a@spam.example")[0] == 250  # ".spam.example" is its subdomains
        assert smtp.rcpt("b@example.org")[0] == 250
        assert smtp.rcpt("b@example.net") == (
            554,
            b"5.7.1 <b@example.net>: Recipient address rejected: domain not allowed",
        )


def test_recipient_table(tmp_path: Path) -> None:
    path = tmp_path / "recipients"
    path.write_text("# users\nalice@example.org\n@example.net\n")
    table = RecipientTable.load(path)
    pipeline = Pipeline(table, deliver=MaildirDelivery(tmp_path / "mail", per_recipient=True))
    with running_server(pipeline) as server, client(server) as smtp:
        smtp.mail("a@elsewhere.example")
        assert smtp.rcpt("Alice+news@Example.org")[0] == 250
        assert smtp.rcpt("anyone@example.net")[0] == 250  # the whole domain
        assert smtp.rcpt("postmaster@example.org")[0] == 250
        assert smtp.rcpt("bob@example.org") == (
            550,
            b"5.1.1 <bob@example.org>: Recipient address rejected: User unknown",
        )
        assert smtp.rcpt("x@elsewhere.example")[0] == 250  # not its business
    path.write_text("alice@example.org\nnot an address\n")
    with pytest.raises(ValueError, match="recipients:2"):
        RecipientTable.load(path)


# ---------------------------------------------------------------------------------- TOML tables


def test_every_type_name_builds(tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text("alice:wonderland\n")
    key = tmp_path / "dkim.private"
    key.write_bytes(
        rsa.generate_private_key(public_exponent=65537, key_size=1024).private_bytes(
            Encoding.PEM, PrivateFormat.TraditionalOpenSSL, NoEncryption()
        )
    )
    tables: dict[str, dict[str, Any]] = {
        "cidr-blocklist": {"networks": ["192.0.2.0/24"]},
        "cidr-allowlist": {"networks": ["10.0.0.0/8"]},
        "dnsbl": {"zones": ["zen.example"]},
        "rhsbl": {"zones": ["dbl.example"]},
        "require-tls": {},
        "require-auth": {},
        "password-auth": {"file": str(users)},
        "relay-control": {"networks": ["10.0.0.0/8"], "domains": ["example.org"]},
        "sender-domains": {"deny": ["spam.example"]},
        "recipient-domains": {"allow": ["example.org"]},
        "recipient-table": {"addresses": ["alice@example.org"]},
        "greylist": {"store": "memory:"},
        "rate-limit": {"store": "memory:", "ip": {"connections": 10}},
        "spf": {},
        "dkim": {},
        "arc": {},
        "dmarc": {},
        "dkim-sign": {"domain": "example.org", "selector": "s", "key_file": str(key)},
        "rspamd": {"url": "http://127.0.0.1:11333"},
    }
    assert tables.keys() == POLICY_TYPES.keys()
    for kind, keys in tables.items():
        assert isinstance(build_policy({"type": kind, **keys}), Policy)


def test_dns_servers_point_every_lookup() -> None:
    policy = build_policy({"type": "dnsbl", "zones": ["z.example"]}, {"dns_servers": ["::1:53"]})
    assert isinstance(policy, Dnsbl)
    policy = build_policy({"type": "rhsbl", "zones": ["z"]}, {"dns_servers": ["127.0.0.1:5353"]})
    assert isinstance(policy, Rhsbl) and policy.dns_servers == (("127.0.0.1", 5353),)


@pytest.mark.parametrize(
    ("table", "key", "why"),
    [
        ({"type": "nope"}, "type", "'nope' is not a policy type"),
        ({}, "type", "missing"),
        ({"type": "dnsbl"}, "zones", "missing"),
        ({"type": "dnsbl", "zones": "z"}, "zones", "expected an array of strings"),
        ({"type": "relay-control", "networks": ["nonsense"]}, "networks", "nonsense"),
        ({"type": "relay-control", "domain": ["x"]}, "domain", "not a key of type"),
        ({"type": "password-auth", "file": "/nonexistent"}, "file", "cannot read"),
        ({"type": "cidr-blocklist"}, "", "needs networks"),
        ({"type": "require-tls", "strict": True}, "strict", "its keys: none"),
    ],
)
def test_table_problems_name_the_key(table: dict[str, Any], key: str, why: str) -> None:
    with pytest.raises(ConfigError) as raised:
        build_policy(table)
    assert raised.value.key == key
    assert why in raised.value.why
