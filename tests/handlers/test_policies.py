"""Policies composed by inheritance in front of a delivery handler."""

from __future__ import annotations

import functools
import ipaddress
import smtplib
import socket
from pathlib import Path
from typing import Any, ClassVar

import pytest
from support import WAIT

from smtp_core import Config
from smtpkit.handlers import (
    Accept,
    CidrBlocklist,
    Dnsbl,
    Handler,
    HookResult,
    MaildirHandler,
    Networks,
    PasswordAuth,
    PasswordFile,
    Policy,
    RcptParams,
    Reject,
    RelayControl,
    SinkHandler,
)
from smtpkit.handlers._policies import dnsbl_name
from smtpkit.transports import running_server
from smtpkit.transports._pump import Mode, plan_for

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


# ---------------------------------------------------------------------------------- composition


def test_hooks_are_detected_through_the_mixins() -> None:
    class Composed(CidrBlocklist, RelayControl, MaildirHandler):
        pass

    modes = plan_for(Composed).modes
    assert modes["welcome"] is Mode.THREAD
    assert modes["rcpt"] is Mode.THREAD
    assert modes["data"] is Mode.THREAD
    assert modes["mail"] is Mode.DEFAULT
    assert modes["ehlo"] is Mode.DEFAULT
    assert modes["auth"] is Mode.DEFAULT  # no AUTH offered


def test_non_blocking_delivery_keeps_cheap_checks_inline_but_not_dns() -> None:
    class Cheap(CidrBlocklist, SinkHandler):
        pass

    class WithDns(Dnsbl, SinkHandler):
        pass

    assert plan_for(Cheap).modes["welcome"] is Mode.INLINE
    assert plan_for(WithDns).modes["welcome"] is Mode.THREAD  # Dnsbl blocks: worker pool


def test_a_policy_cannot_hand_over_to_an_async_hook() -> None:
    class AsyncDelivery(Handler):
        async def rcpt(self, recipient: str, params: RcptParams) -> HookResult:
            return Accept()

    with pytest.raises(TypeError, match=r"RelayControl.rcpt\(\) is a plain def"):

        class Broken(RelayControl, AsyncDelivery):
            pass

    class MyCheck(Policy):
        def rcpt(self, recipient: str, params: RcptParams) -> HookResult:
            return super().rcpt(recipient, params)

    with pytest.raises(TypeError, match=r"MyCheck.rcpt\(\) is a plain def"):

        class AlsoBroken(MyCheck, AsyncDelivery):
            pass

    # Overriding an async hook outright (no super()) is fine.
    class Replaces(AsyncDelivery):
        def rcpt(self, recipient: str, params: RcptParams) -> HookResult:
            return Accept()


def test_your_own_check_in_the_same_pattern() -> None:
    class NoSpamSender(Policy):
        def mail(self, sender: str, params: Any) -> Any:
            if sender.endswith("@spam.example"):
                return Reject(550, "5.7.1 Sender rejected")
            return super().mail(sender, params)

    class Store(NoSpamSender, SinkHandler):
        pass

    with running_server(Store) as server, client(server) as smtp:
        assert smtp.mail("x@spam.example") == (550, b"5.7.1 Sender rejected")
        assert smtp.mail("x@ok.example")[0] == 250


# ---------------------------------------------------------------------------------- CidrBlocklist


def test_blocklisted_client_gets_421_and_is_dropped() -> None:
    class Guarded(CidrBlocklist, SinkHandler):
        blocklist = Networks(["127.0.0.2/32"])

    with running_server(Guarded) as server:
        first, rest = greeting(server, source="127.0.0.2")
        assert first.startswith(b"421 ")
        assert b"Error: client host [127.0.0.2] blocked" in first
        assert rest == b""  # closed
        first, rest = greeting(server, source="127.0.0.1")
        assert first.startswith(b"220 ")
        assert rest == b"(still open)"


# ---------------------------------------------------------------------------------- Dnsbl


def test_dnsbl_name() -> None:
    assert dnsbl_name("127.0.0.2", "zen.example.") == "2.0.0.127.zen.example"
    assert dnsbl_name("::ffff:192.0.2.1", "bl.test") == "1.2.0.192.bl.test"
    v6 = dnsbl_name("2001:db8::1", "bl.test")
    assert v6.startswith("1.0.0.0.") and v6.endswith(".8.b.d.0.1.0.0.2.bl.test")
    assert len(v6.split(".")) == 32 + 2


def dnsbl_handler(stub: Any, zones: tuple[str, ...] = ("bl.test",), **attrs: Any) -> type:
    namespace = {"dnsbl_zones": zones, "dns_server": stub.address, "dns_timeout": 2.0, **attrs}
    return type("Guarded", (Dnsbl, SinkHandler), namespace)


def test_dnsbl_listed_client_is_dropped(dns_stub: Any) -> None:
    dns_stub.listed.add("2.0.0.127.bl.test")
    with running_server(dnsbl_handler(dns_stub)) as server:
        first, rest = greeting(server, source="127.0.0.2")
        assert first.startswith(b"421 ")
        assert b"blocked using bl.test" in first
        assert rest == b""
        first, _ = greeting(server, source="127.0.0.1")
        assert first.startswith(b"220 ")
    assert dns_stub.queries == ["2.0.0.127.bl.test", "1.0.0.127.bl.test"]


def test_dnsbl_checks_each_zone(dns_stub: Any) -> None:
    dns_stub.listed.add("3.0.0.127.second.test")
    with running_server(dnsbl_handler(dns_stub, ("first.test", "second.test"))) as server:
        assert greeting(server, source="127.0.0.3")[0].startswith(b"421 ")
    assert dns_stub.queries == ["3.0.0.127.first.test", "3.0.0.127.second.test"]


def test_dnsbl_failure_lets_the_client_in(dns_stub: Any) -> None:
    dns_stub.silent = True
    dns_stub.listed.add("2.0.0.127.bl.test")
    with running_server(dnsbl_handler(dns_stub, dns_timeout=0.3)) as server:
        assert greeting(server, source="127.0.0.2")[0].startswith(b"220 ")


def test_dnsbl_error_codes_are_not_listings(dns_stub: Any, monkeypatch: Any) -> None:
    cls = dnsbl_handler(dns_stub)
    handler = cls()
    import dns.resolver

    class Answer(list[Any]):
        pass

    class Record:
        def __init__(self, text: str) -> None:
            self.text = text

        def to_text(self) -> str:
            return self.text

    def fake(self: Any, name: str, *args: Any, **kwargs: Any) -> Any:
        return Answer([Record("127.255.255.254")])

    monkeypatch.setattr(dns.resolver.Resolver, "resolve", fake)
    assert not handler.dnsbl_listed("192.0.2.1", "bl.test")


# ---------------------------------------------------------------------------------- RelayControl


class Recorder(Handler):
    accepted: ClassVar[list[str]]

    def rcpt(self, recipient: str, params: RcptParams) -> HookResult:
        type(self).accepted.append(recipient)
        return Accept()


def relay_policy(**attrs: Any) -> type:
    users = PasswordFile({"alice": "wonderland"})
    namespace = {"accepted": [], "local_domains": frozenset({"example.org"}), **attrs}
    namespace["password_file"] = users
    return type("Gate", (RelayControl, PasswordAuth, Recorder), namespace)


def test_no_open_relay() -> None:
    cls = relay_policy()
    with running_server(cls, config=PLAINTEXT_AUTH) as server:
        with client(server) as smtp:
            smtp.mail("someone@elsewhere.example")
            assert smtp.rcpt("bob@example.org")[0] == 250  # ours
            assert smtp.rcpt("POSTMASTER")[0] == 250
            assert smtp.rcpt("bob@Example.ORG.")[0] == 250
            assert smtp.rcpt("victim@elsewhere.example") == (
                550,
                b"5.7.1 <victim@elsewhere.example>: Relay access denied",
            )
        with client(server) as smtp:
            smtp.login("alice", "wonderland")
            smtp.mail("alice@example.org")
            assert smtp.rcpt("friend@elsewhere.example")[0] == 250  # authenticated
    assert cls.accepted == [
        "bob@example.org",
        "POSTMASTER",
        "bob@Example.ORG.",
        "friend@elsewhere.example",
    ]


def test_relay_from_allowed_networks() -> None:
    cls = relay_policy(relay_networks=Networks(["127.0.0.2/32"]))
    with running_server(cls) as server:
        with client(server, "127.0.0.2") as smtp:
            smtp.mail("a@example.org")
            assert smtp.rcpt("friend@elsewhere.example")[0] == 250
        with client(server) as smtp:
            smtp.mail("a@example.org")
            assert smtp.rcpt("friend@elsewhere.example")[0] == 550


# ---------------------------------------------------------------------------------- PasswordAuth


def test_password_auth_offers_and_checks() -> None:
    cls = relay_policy()
    assert plan_for(cls).offers_auth
    with running_server(cls, config=PLAINTEXT_AUTH) as server, client(server) as smtp:
        assert "PLAIN" in smtp.esmtp_features["auth"]
        with pytest.raises(smtplib.SMTPAuthenticationError) as err:
            smtp.login("alice", "wrong")
        assert err.value.smtp_code == 535
        smtp.login("alice", "wonderland")


def test_password_auth_hands_over_to_the_next_auth() -> None:
    class Fallback(Handler):
        def auth(self, user: str, password: str) -> HookResult:
            return Accept() if (user, password) == ("robot", "token") else Reject()

    class Both(PasswordAuth, Fallback):
        password_file = PasswordFile({"alice": "wonderland"})

    with running_server(Both, config=PLAINTEXT_AUTH) as server:
        for user, password in (("alice", "wonderland"), ("robot", "token")):
            with client(server) as smtp:
                smtp.login(user, password)


def test_gateway_shape_from_the_docs(tmp_path: Path) -> None:
    """The docs' example composition serves mail end to end (delivery: Maildir)."""
    blocked = tmp_path / "blocked"
    blocked.write_text("203.0.113.0/24\n")

    class Gateway(CidrBlocklist, RelayControl, PasswordAuth, MaildirHandler):
        blocklist = Networks.load(blocked)
        local_domains = frozenset({"example.org"})
        password_file = PasswordFile({"alice": "wonderland"})

    factory = functools.partial(Gateway, tmp_path / "mail", per_recipient=True)
    with running_server(factory, config=PLAINTEXT_AUTH) as server, client(server) as smtp:
        refused = smtp.sendmail("a@elsewhere.example", ["b@example.org", "c@else.example"], b"x")
        assert refused == {"c@else.example": (550, b"5.7.1 <c@else.example>: Relay access denied")}
    assert len(list((tmp_path / "mail" / "b@example.org" / "new").iterdir())) == 1
