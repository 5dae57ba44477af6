"""The conformance suite: what every transport shares, over real sockets on 127.0.0.1.

Each test runs on asyncio, anyio (asyncio and trio backends) and threads, the asyncio ones on
the stdlib loop and on uvloop, against real clients: smtplib, aiosmtplib and a raw-socket peer
(`support.Peer`). Concurrency is proven with events and barriers, never with sleeps; every
wait is bounded, so a hang fails instead of stalling. After each test the `transport` fixture
checks that every session ended and no socket was left open.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import functools
import logging
import random
import re
import select
import smtplib
import socket
import threading
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
from support import (
    WAIT,
    Calls,
    Peer,
    Tls,
    Transport,
    code,
    has_ipv6_loopback,
    in_thread,
    local_non_loopback_ipv4,
    on_transports,
    vm_rss,
)

from smtp_core import Config, MailParams, RcptParams
from smtpkit.handlers import Accept, Close, Handler, MaildirHandler, Message, Reject, SinkHandler
from smtpkit.transports import Server, ServerOptions
from smtpkit.transports._limits import ConnectionLimits, client_key

pytestmark = pytest.mark.timeout(60)

MESSAGE = b"From: a@b.example\r\nTo: c@d.example\r\nSubject: test\r\n\r\nHello.\r\n"
#: 50 NOOPs and a transaction, pipelined: cheap for the server, and not a session of junk
#: commands alone (delivering mail resets the junk-command count, as in Postfix).
PIPELINED = b"NOOP\r\n" * 50 + (
    b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n"
)
QUEUED = re.compile(rb"^250 2\.0\.0 Ok: queued as ([0-9A-Z]+)\r\n\Z")


class Keep(Handler):
    """Keeps every message in its class's list (`keeper()` makes a fresh one); never blocks."""

    blocking = False
    messages: list[bytes] = []

    def data(self, message: Message) -> Accept:
        self.messages.append(bytes(message))
        return Accept()


def keeper() -> tuple[type[Handler], list[bytes]]:
    """A fresh Keep subclass and the list it fills."""
    messages: list[bytes] = []
    return type("Keeper", (Keep,), {"messages": messages}), messages


def body_of(message: bytes) -> bytes:
    """The message without the Received header the server prepends."""
    assert message.startswith(b"Received: "), message[:200]
    end = message.index(b"\r\n", 0)
    while message[end + 2 : end + 3] in (b"\t", b" "):
        end = message.index(b"\r\n", end + 2)
    return message[end + 2 :]


# ====================================================================== smtplib


@on_transports("asyncio", "anyio-asyncio")
def test_runs_on_the_loop_asked_for(transport: Transport) -> None:
    # The stdlib loop is what a default install runs on; uvloop only when asked for.
    calls = Calls()

    class Loop(Handler):
        async def welcome(self, client_ip: str) -> Accept:
            calls.add("loop", type(asyncio.get_running_loop()).__module__)
            return Accept()

    with transport.serve(Loop) as server, Peer((server.host, server.port)) as p:
        assert p.reply().startswith(b"220")
    [module] = calls.of("loop")
    assert module.partition(".")[0] == ("uvloop" if transport.uvloop else "asyncio")


def test_smtplib_plain_send(transport: Transport) -> None:
    cls, messages = keeper()
    with transport.serve(cls) as server, smtplib.SMTP(server.host, server.port) as client:
        refused = client.sendmail("a@b.example", ["c@d.example", "e@f.example"], MESSAGE)
        assert refused == {}
    assert len(messages) == 1
    assert body_of(messages[0]) == MESSAGE


def test_ehlo_extensions(transport: Transport, tls: Tls) -> None:
    expected = {"pipelining", "size", "8bitmime", "smtputf8", "enhancedstatuscodes"}
    expected |= {"chunking", "dsn"}
    config = Config(hostname="mx.example.test")
    with (
        transport.serve(SinkHandler, config=config) as server,
        smtplib.SMTP(server.host, server.port) as client,
    ):
        status, text = client.ehlo("client.example")
        assert status == 250
        assert text.split(b"\n")[0] == b"mx.example.test"
        assert set(client.esmtp_features) == expected
        assert client.esmtp_features["size"] == str(32 * 1024 * 1024)
    with (
        transport.serve(SinkHandler, ssl_context=tls.server) as server,
        smtplib.SMTP(server.host, server.port) as client,
    ):
        client.ehlo("client.example")
        assert set(client.esmtp_features) == expected | {"starttls"}
        client.starttls(context=tls.client)
        client.ehlo("client.example")
        assert set(client.esmtp_features) == expected  # no STARTTLS inside TLS


def test_starttls(transport: Transport, tls: Tls) -> None:
    calls = Calls()

    class Watch(Handler):
        blocking = False

        def data(self, message: Message) -> Accept:
            calls.add("data", (self.session.tls, self.session.tls_version, bytes(message)))
            return Accept()

    with (
        transport.serve(Watch, ssl_context=tls.server) as server,
        smtplib.SMTP(server.host, server.port) as client,
    ):
        client.ehlo("client.example")
        assert client.starttls(context=tls.client)[0] == 220
        client.sendmail("a@b.example", ["c@d.example"], MESSAGE)
        assert client.noop()[0] == 250
    [(is_tls, version, message)] = calls.of("data")
    assert is_tls
    assert version is not None and version.startswith("TLSv1.")
    assert b"with ESMTPS id " in message  # the Received header says TLS too
    assert body_of(message) == MESSAGE


def test_starttls_inside_tls_is_refused(transport: Transport, tls: Tls) -> None:
    with (
        transport.serve(SinkHandler, ssl_context=tls.server) as server,
        Peer((server.host, server.port)) as p,
    ):
        p.hello()
        p.starttls(tls.client)
        assert p.command(b"EHLO again").startswith(b"250")
        assert p.command(b"STARTTLS").startswith(b"503 5.5.1")
        assert p.command(b"NOOP").startswith(b"250")


class AliceOnly(Handler):
    """Accepts one user; records what the data hook saw of the session and envelope."""

    blocking = False
    seen: list[tuple[Any, ...]] = []

    def auth(self, user: str, password: str) -> Accept | Reject:
        if (user, password) == ("alice", "s3cret"):
            return Accept()
        return Reject()

    def data(self, message: Message) -> Accept:
        s, e = self.session, self.envelope
        self.seen.append((s.peer, s.helo_name, s.tls, s.user, e.sender, e.recipients))
        return Accept()


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
@pytest.mark.parametrize("initial_response", [True, False])
def test_auth_over_starttls(
    transport: Transport, tls: Tls, mechanism: str, initial_response: bool
) -> None:
    seen: list[tuple[Any, ...]] = []
    cls = type("Alice", (AliceOnly,), {"seen": seen})
    with (
        transport.serve(cls, ssl_context=tls.server) as server,
        smtplib.SMTP(server.host, server.port, local_hostname="client.example") as client,
    ):
        client.ehlo()
        assert "auth" not in client.esmtp_features  # not before TLS
        client.starttls(context=tls.client)
        client.ehlo()
        assert client.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
        client.user, client.password = "alice", "wrong"
        authobject = client.auth_plain if mechanism == "PLAIN" else client.auth_login
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            client.auth(mechanism, authobject, initial_response_ok=initial_response)
        assert refused.value.smtp_code == 535
        assert refused.value.smtp_error == b"5.7.8 Error: authentication failed"
        client.password = "s3cret"
        status, _ = client.auth(mechanism, authobject, initial_response_ok=initial_response)
        assert status == 235
        client.sendmail("a@b.example", ["c@d.example"], MESSAGE)
        assert client.sock is not None
        local = client.sock.getsockname()
    [(peer, helo, is_tls, user, sender, recipients)] = seen
    assert peer == (local[0], local[1])
    assert (helo, is_tls, user) == ("client.example", True, "alice")
    assert (sender, recipients) == ("a@b.example", ("c@d.example",))


def test_auth_not_offered_without_tls(transport: Transport) -> None:
    with (
        transport.serve(AliceOnly) as server,
        smtplib.SMTP(server.host, server.port) as client,
    ):
        client.ehlo("client.example")
        assert "auth" not in client.esmtp_features
        status, text = client.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0a\0b").decode())
        assert status == 538
        assert text.startswith(b"5.7.11")


def test_auth_allowed_in_plaintext_when_configured(transport: Transport) -> None:
    seen: list[tuple[Any, ...]] = []
    cls = type("Alice", (AliceOnly,), {"seen": seen})
    config = Config(auth_allow_plaintext=True)
    with (
        transport.serve(cls, config=config) as server,
        smtplib.SMTP(server.host, server.port) as client,
    ):
        client.ehlo("client.example")
        assert client.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
        assert client.login("alice", "s3cret")[0] == 235
        client.sendmail("a@b.example", ["c@d.example"], MESSAGE)
    assert [s[2:4] for s in seen] == [(False, "alice")]


def test_smtps_listener(transport: Transport, tls: Tls) -> None:
    calls = Calls()

    class Watch(Handler):
        blocking = False

        def welcome(self, client_ip: str) -> Accept:
            calls.add("welcome", self.session.tls)
            return Accept()

        def data(self, message: Message) -> Accept:
            calls.add("data", (self.session.tls, self.session.tls_version))
            return Accept()

    options = {"ssl_context": tls.server, "tls_listen": (("127.0.0.1", 0),)}
    with transport.serve(Watch, **options) as server:
        host, port = server.tls_addresses[0]
        with smtplib.SMTP_SSL(host, port, context=tls.client) as client:
            client.ehlo("client.example")
            assert "starttls" not in client.esmtp_features
            client.sendmail("a@b.example", ["c@d.example"], MESSAGE)
    assert calls.of("welcome") == [True]
    [(is_tls, version)] = calls.of("data")
    assert is_tls and version is not None and version.startswith("TLSv1.")


class Picky(Handler):
    """Refuses bad@ senders, nobody@ recipients, and messages with "tempfail" in them."""

    blocking = False

    def mail(self, sender: str, params: MailParams) -> Accept | Reject:
        return Reject() if sender.startswith("bad@") else Accept()

    def rcpt(self, recipient: str, params: RcptParams) -> Accept | Reject:
        return Reject() if recipient.startswith("nobody@") else Accept()

    def data(self, message: Message) -> Accept | Reject:
        if b"tempfail" in bytes(message):
            return Reject(451, "4.3.0 Try again later")
        return Accept()


def test_rejected_senders_and_recipients(transport: Transport) -> None:
    with transport.serve(Picky) as server, smtplib.SMTP(server.host, server.port) as client:
        with pytest.raises(smtplib.SMTPSenderRefused) as sender:
            client.sendmail("bad@b.example", ["c@d.example"], MESSAGE)
        assert (sender.value.smtp_code, sender.value.smtp_error) == (
            550,
            b"5.7.1 Error: sender rejected",
        )
        refused = client.sendmail("a@b.example", ["c@d.example", "nobody@d.example"], MESSAGE)
        assert refused == {"nobody@d.example": (550, b"5.7.1 Error: recipient rejected")}
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            client.sendmail("a@b.example", ["nobody@d.example"], MESSAGE)
        assert client.noop()[0] == 250


def test_data_reject_with_4xx(transport: Transport) -> None:
    with transport.serve(Picky) as server, smtplib.SMTP(server.host, server.port) as client:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail("a@b.example", ["c@d.example"], MESSAGE + b"tempfail\r\n")
        assert (refused.value.smtp_code, refused.value.smtp_error) == (
            451,
            b"4.3.0 Try again later",
        )
        assert client.sendmail("a@b.example", ["c@d.example"], MESSAGE) == {}


def test_smtputf8(transport: Transport) -> None:
    calls = Calls()

    class Watch(Handler):
        blocking = False

        def data(self, message: Message) -> Accept:
            calls.add("data", (self.envelope.sender, self.envelope.recipients, bytes(message)))
            return Accept()

    text = "From: jörg@exämple.test\r\nSubject: grüße\r\n\r\nHallo, 世界\r\n".encode()
    with transport.serve(Watch) as server, smtplib.SMTP(server.host, server.port) as client:
        client.sendmail("jörg@exämple.test", ["名前@例え.jp"], text, mail_options=["SMTPUTF8"])
    [(sender, recipients, message)] = calls.of("data")
    assert (sender, recipients) == ("jörg@exämple.test", ("名前@例え.jp",))
    assert body_of(message) == text


def test_one_megabyte_message(transport: Transport) -> None:
    cls, messages = keeper()
    line = b"x" * 998 + b"\r\n"
    text = b"Subject: big\r\n\r\n" + line * 1050
    with transport.serve(cls) as server, smtplib.SMTP(server.host, server.port) as client:
        client.sendmail("a@b.example", ["c@d.example"], text)
    assert [body_of(m) for m in messages] == [text]


def test_many_messages_on_one_connection(transport: Transport) -> None:
    cls, messages = keeper()
    with transport.serve(cls) as server, smtplib.SMTP(server.host, server.port) as client:
        for i in range(100):
            client.sendmail("a@b.example", ["c@d.example"], b"Subject: %d\r\n\r\nx\r\n" % i)
    assert [body_of(m) for m in messages] == [b"Subject: %d\r\n\r\nx\r\n" % i for i in range(100)]


def test_bdat(transport: Transport) -> None:
    cls, messages = keeper()
    with transport.serve(cls) as server, Peer((server.host, server.port)) as p:
        assert b"CHUNKING" in p.hello()
        assert p.command(b"MAIL FROM:<a@b.example>").startswith(b"250")
        assert p.command(b"RCPT TO:<c@d.example>").startswith(b"250")
        first, last = b"Subject: x\r\n\r\n.dot", b"\r\n.\r\nend\r\n"  # no dot handling
        p.send(b"BDAT %d\r\n%s" % (len(first), first))
        assert p.reply() == b"250 2.0.0 %d octets received\r\n" % len(first)
        p.send(b"BDAT %d LAST\r\n%s" % (len(last), last))
        assert QUEUED.match(p.reply())
        assert p.command(b"QUIT").startswith(b"221")
    assert [body_of(m) for m in messages] == [b"Subject: x\r\n\r\n.dot\r\n.\r\nend\r\n"]


def test_fake_handler_from_the_seed(transport: Transport) -> None:
    class FakeHandler(Handler):
        def mail(self, sender: str, params: MailParams) -> Accept:
            return Accept(f"{sender}, sender ok")

        def rcpt(self, recipient: str, params: RcptParams) -> Accept:
            return Accept(f"{recipient}, recipient ok")

        def data(self, message: Message) -> Accept:
            return Accept("Requested mail action okay, completed.")

    with transport.serve(FakeHandler) as server, Peer((server.host, server.port)) as p:
        p.hello()
        assert p.command(b"MAIL FROM:<a@b.example>") == b"250 2.1.0 a@b.example, sender ok\r\n"
        assert p.command(b"RCPT TO:<c@d.example>") == b"250 2.1.5 c@d.example, recipient ok\r\n"
        assert p.command(b"DATA").startswith(b"354 ")
        p.send(MESSAGE + b".\r\n")
        assert p.reply() == b"250 2.0.0 Requested mail action okay, completed.\r\n"
        assert p.command(b"QUIT").startswith(b"221")
        assert p.closed()


# ====================================================================== aiosmtplib


def test_aiosmtplib_send(transport: Transport) -> None:
    cls, messages = keeper()
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "a@b.example", "c@d.example", "hi"
    message.set_content("Hello.\n")

    async def main(host: str, port: int) -> None:
        errors, response = await aiosmtplib.send(
            message, hostname=host, port=port, start_tls=False, timeout=WAIT
        )
        assert errors == {}
        assert response.startswith("2.0.0 Ok: queued as ")

    with transport.serve(cls) as server:
        asyncio.run(main(server.host, server.port))
    assert len(messages) == 1
    assert b"Subject: hi\r\n" in messages[0]


def test_aiosmtplib_starttls(transport: Transport, tls: Tls) -> None:
    calls = Calls()

    class Watch(Handler):
        blocking = False

        def data(self, message: Message) -> Accept:
            calls.add("data", self.session.tls)
            return Accept()

    async def main(host: str, port: int) -> None:
        client = aiosmtplib.SMTP(
            hostname=host, port=port, start_tls=True, tls_context=tls.client, timeout=WAIT
        )
        async with client:
            assert client.is_ehlo_or_helo_needed or client.supports_extension("size")
            await client.sendmail("a@b.example", ["c@d.example"], MESSAGE)

    with transport.serve(Watch, ssl_context=tls.server) as server:
        asyncio.run(main(server.host, server.port))
    assert calls.of("data") == [True]


def test_aiosmtplib_concurrent_sends(transport: Transport) -> None:
    # aiosmtplib does not pipeline commands; this is many clients at once, each sending
    # several messages on its connection.
    cls, messages = keeper()

    async def one(host: str, port: int, n: int) -> None:
        async with aiosmtplib.SMTP(hostname=host, port=port, start_tls=False, timeout=WAIT) as c:
            for i in range(5):
                text = b"Subject: %d-%d\r\n\r\nx\r\n" % (n, i)
                errors, _ = await c.sendmail("a@b.example", ["c@d.example", "e@f.example"], text)
                assert errors == {}

    async def main(host: str, port: int) -> None:
        await asyncio.gather(*(one(host, port, n) for n in range(10)))

    with transport.serve(cls) as server:
        asyncio.run(main(server.host, server.port))
    assert sorted(body_of(m) for m in messages) == sorted(
        b"Subject: %d-%d\r\n\r\nx\r\n" % (n, i) for n in range(10) for i in range(5)
    )


# ====================================================================== raw sockets


class Blocking(Handler):
    """Plain hooks (on the worker pool), so pipelined input waits behind each decision."""

    def mail(self, sender: str, params: MailParams) -> Accept | Reject:
        return Reject() if sender.startswith("bad@") else Accept()

    def rcpt(self, recipient: str, params: RcptParams) -> Accept | Reject:
        return Reject() if recipient.startswith("nobody@") else Accept()

    def data(self, message: Message) -> Accept:
        return Accept()


def test_pipelining_a_whole_transaction_in_one_write(transport: Transport) -> None:
    with transport.serve(Blocking) as server, Peer((server.host, server.port)) as p:
        p.send(
            b"EHLO client.example\r\n"
            b"MAIL FROM:<a@b.example>\r\n"
            b"RCPT TO:<c@d.example>\r\n"
            b"RCPT TO:<nobody@d.example>\r\n"
            b"RCPT TO:<e@f.example>\r\n"
            b"DATA\r\n" + MESSAGE + b".\r\n"
            b"MAIL FROM:<bad@b.example>\r\n"
            b"RCPT TO:<c@d.example>\r\n"
            b"DATA\r\n"
            b"NOOP\r\n"
            b"RSET\r\n"
            b"QUIT\r\n"
        )
        replies = p.replies_until_closed()
    codes = [code(r) for r in replies]
    assert codes == [220, 250, 250, 250, 550, 250, 354, 250, 550, 503, 503, 250, 250, 221]
    assert QUEUED.match(replies[7])


def test_pipelining_replies_are_not_held_back(transport: Transport) -> None:
    # The last command of a pipelined group gets its reply without waiting for more input.
    with transport.serve(Blocking) as server, Peer((server.host, server.port)) as p:
        p.hello()
        p.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n")
        assert [code(r) for r in p.replies(3)] == [250, 250, 354]
        p.send(MESSAGE + b".\r\nMAIL FROM:<a@b.example>\r\n")
        assert [code(r) for r in p.replies(2)] == [250, 250]


def test_endless_line(transport: Transport) -> None:
    with transport.serve(SinkHandler) as server, Peer((server.host, server.port)) as p:
        p.hello()
        p.send(b"NOOP " + b"x" * (5 * 1024 * 1024) + b"\r\n")
        assert p.reply() == b"500 5.5.2 Error: line too long\r\n"
        assert p.command(b"NOOP") == b"250 2.0.0 Ok\r\n"  # exactly one 500, then in sync
        assert p.send_message().startswith(b"250 ")


def test_nul_bytes(transport: Transport) -> None:
    with transport.serve(SinkHandler) as server, Peer((server.host, server.port)) as p:
        p.hello()
        assert p.command(b"NOOP\0").startswith(b"500 5.5.2")
        assert p.command(b"MAIL FROM:<a\0b@c.example>").startswith(b"500 5.5.2")
        assert p.command(b"\0\0\0").startswith(b"500 5.5.2")
        assert p.command(b"NOOP") == b"250 2.0.0 Ok\r\n"
        assert p.send_message().startswith(b"250 ")


def test_bare_lf_in_data_is_rejected(transport: Transport) -> None:
    cls, messages = keeper()
    with transport.serve(cls) as server, Peer((server.host, server.port)) as p:
        p.hello()
        assert p.send_message(b"Subject: x\n\nbare LF\r\n") == (
            b"550 5.5.2 Error: bare CR or LF in message text\r\n"
        )
        assert p.command(b"NOOP") == b"250 2.0.0 Ok\r\n"
        assert p.send_message().startswith(b"250 ")
    assert len(messages) == 1


SMUGGLED = b"MAIL FROM:<evil@x.example>\r\nRCPT TO:<victim@y.example>\r\nDATA\r\nSpoofed\r\n"


@pytest.mark.parametrize("end", [b"\n.\n", b"\r\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\r"])
def test_smtp_smuggling_is_not_an_end_of_data(transport: Transport, end: bytes) -> None:
    cls, messages = keeper()
    text = b"Subject: x\r\n\r\nbefore" + end + SMUGGLED + b".\r\n"
    with transport.serve(cls) as server, Peer((server.host, server.port)) as p:
        p.hello()
        assert p.command(b"MAIL FROM:<a@b.example>").startswith(b"250")
        assert p.command(b"RCPT TO:<c@d.example>").startswith(b"250")
        assert p.command(b"DATA").startswith(b"354")
        p.send(text)
        # One reply for the whole thing (rejected: bare line endings), nothing for the
        # "commands" inside it: the next reply is NOOP's.
        assert p.reply().startswith(b"550 5.5.2")
        assert p.command(b"NOOP") == b"250 2.0.0 Ok\r\n"
    assert messages == []


def test_smtp_smuggling_with_normalised_line_endings(transport: Transport) -> None:
    cls, messages = keeper()
    config = Config(bare_line_endings="normalize")
    with transport.serve(cls, config=config) as server, Peer((server.host, server.port)) as p:
        p.hello()
        reply = p.send_message(b"Subject: x\r\n\r\nbefore\n.\n" + SMUGGLED)
        assert QUEUED.match(reply)
        assert p.command(b"NOOP") == b"250 2.0.0 Ok\r\n"
    [message] = messages  # one message, with the smuggled "commands" as its text
    assert body_of(message).startswith(b"Subject: x\r\n\r\nbefore\r\n")
    assert body_of(message).endswith(b"\r\n" + SMUGGLED)


def test_oversized_message(transport: Transport) -> None:
    cls, messages = keeper()
    line = b"y" * 998 + b"\r\n"
    with transport.serve(cls) as server, Peer((server.host, server.port)) as p:
        p.hello()
        assert p.command(b"MAIL FROM:<a@b.example>").startswith(b"250")
        assert p.command(b"RCPT TO:<c@d.example>").startswith(b"250")
        assert p.command(b"DATA").startswith(b"354")
        p.send(b"Subject: huge\r\n\r\n" + line * (33 * 1024 * 1024 // len(line)) + b".\r\n")
        assert p.reply() == b"552 5.3.4 Error: message too large\r\n"  # after the end only
        assert p.command(b"NOOP") == b"250 2.0.0 Ok\r\n"
        assert p.send_message().startswith(b"250 ")
    assert len(messages) == 1


def test_random_garbage(transport: Transport) -> None:
    rng = random.Random(25)
    with transport.serve(SinkHandler) as server:
        address = (server.host, server.port)
        for round_ in range(3):
            with Peer(address) as p:
                assert p.reply().startswith(b"220")
                chunks = [rng.randbytes(rng.randrange(1, 300)) for _ in range(400)]
                garbage = b"\r\n".join(chunks) if round_ else b"".join(chunks)
                try:
                    p.send(garbage + b"\r\n")
                    p.sock.shutdown(socket.SHUT_WR)
                except OSError:  # the server hung up on us first: also fine
                    pass
                replies = p.replies_until_closed()
                assert all(re.match(rb"\d{3}[ -]", r) for r in replies), replies[:5]
                if round_:
                    assert replies, "garbage got no reply at all"
        with Peer(address) as p:  # still serving
            p.hello()
            assert p.send_message().startswith(b"250 ")


def test_http_request(transport: Transport) -> None:
    with transport.serve(SinkHandler) as server, Peer((server.host, server.port)) as p:
        assert p.reply().startswith(b"220")
        p.send(b"GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: test\r\n\r\n")
        assert p.reply().startswith(b"221 2.7.0")
        assert p.closed()


def test_plaintext_pipelined_behind_starttls_is_discarded(transport: Transport, tls: Tls) -> None:
    with (
        transport.serve(SinkHandler, ssl_context=tls.server) as server,
        Peer((server.host, server.port)) as p,
    ):
        p.hello()
        p.send(b"STARTTLS\r\nMAIL FROM:<injected@x.example>\r\n")
        assert p.reply().startswith(b"220 ")
        assert not p.buf
        p.sock = tls.client.wrap_socket(p.sock, server_hostname="localhost")
        # Had the injected MAIL run after the handshake, its reply (503: no EHLO yet)
        # would come first.
        assert p.command(b"EHLO client.example").startswith(b"250-localhost")
        assert p.command(b"MAIL FROM:<a@b.example>").startswith(b"250 ")
        assert p.command(b"NOOP") == b"250 2.0.0 Ok\r\n"


# ====================================================================== hooks


def test_hook_exception_is_451_without_its_text(
    transport: Transport, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(Handler):
        def rcpt(self, recipient: str, params: RcptParams) -> Accept:
            raise RuntimeError("secret-database-password")

    caplog.set_level(logging.ERROR, logger="smtpkit")
    with transport.serve(Broken) as server, Peer((server.host, server.port)) as p:
        p.hello()
        assert p.command(b"MAIL FROM:<a@b.example>").startswith(b"250")
        reply = p.command(b"RCPT TO:<c@d.example>")
        assert reply.startswith(b"451 4.3.0")
        assert b"secret" not in reply
        assert p.command(b"NOOP") == b"250 2.0.0 Ok\r\n"  # the session goes on
    tracebacks = [r for r in caplog.records if r.exc_info and "rcpt" in r.getMessage()]
    assert tracebacks, "the exception was not logged with its traceback"


def test_hooks_see_session_and_envelope(transport: Transport) -> None:
    calls = Calls()

    class Watch(Handler):
        def ehlo(self, hostname: str) -> Accept:
            calls.add("ehlo", (hostname, self.session.helo_name))
            return Accept()

        def rcpt(self, recipient: str, params: RcptParams) -> Accept:
            calls.add("rcpt", (self.envelope.sender, self.envelope.recipients))
            return Accept()

        def data(self, message: Message) -> Accept:
            s, e = self.session, self.envelope
            calls.add("data", (s.peer, s.helo_name, s.tls, s.user, e.sender, e.recipients))
            return Accept()

    with transport.serve(Watch) as server, Peer((server.host, server.port)) as p:
        p.hello(b"me.example")
        reply = p.send_message(recipients=(b"c@d.example", b"e@f.example"))
        assert QUEUED.match(reply)
        local = p.sock.getsockname()
    assert calls.of("ehlo") == [("me.example", None)]  # the name is set once accepted
    assert calls.of("rcpt") == [("a@b.example", ()), ("a@b.example", ("c@d.example",))]
    recipients = ("c@d.example", "e@f.example")
    assert calls.of("data") == [
        ((local[0], local[1]), "me.example", False, None, "a@b.example", recipients)
    ]


def test_reset_hook(transport: Transport) -> None:
    calls = Calls()

    class Watch(SinkHandler):
        def reset(self) -> None:
            calls.add("reset", self.envelope.sender)

    with transport.serve(Watch) as server, Peer((server.host, server.port)) as p:
        p.hello()
        assert p.command(b"MAIL FROM:<a@b.example>").startswith(b"250")
        assert p.command(b"RSET") == b"250 2.0.0 Ok\r\n"
        assert p.command(b"RSET") == b"250 2.0.0 Ok\r\n"
        assert p.command(b"NOOP") == b"250 2.0.0 Ok\r\n"
    assert calls.of("reset") == [None, None]  # after the transaction was forgotten


def test_close_hook_runs_once_per_connection(transport: Transport) -> None:
    lock = threading.Lock()
    closes: dict[int, int] = {}  # client port -> close() calls
    welcomed: list[int] = []
    all_closed = threading.Event()
    ways = ["QUIT", "gone after EHLO", "gone mid-DATA", "reset mid-DATA"]
    ports: dict[int, str] = {}

    class Watch(Handler):
        def welcome(self, client_ip: str) -> Accept:
            with lock:
                welcomed.append(self.session.peer[1] if self.session.peer else 0)
            return Accept()

        def close(self) -> None:
            port = self.session.peer[1] if self.session.peer else 0
            with lock:
                closes[port] = closes.get(port, 0) + 1
                if len(closes) == 4:
                    all_closed.set()

    with transport.serve(Watch) as server:
        address = (server.host, server.port)
        with Peer(address) as p:  # QUIT
            ports[p.sock.getsockname()[1]] = ways[0]
            p.hello()
            assert p.command(b"QUIT").startswith(b"221")
            assert p.closed()
        with Peer(address) as p:  # the client just goes away
            ports[p.sock.getsockname()[1]] = ways[1]
            p.hello()
        with Peer(address) as p:  # ... in the middle of DATA
            ports[p.sock.getsockname()[1]] = ways[2]
            p.hello()
            assert p.command(b"MAIL FROM:<a@b.example>").startswith(b"250")
            assert p.command(b"RCPT TO:<c@d.example>").startswith(b"250")
            assert p.command(b"DATA").startswith(b"354")
            p.send(b"Subject: x\r\n\r\npartial")
        with Peer(address) as p:  # ... with a reset, mid-DATA
            ports[p.sock.getsockname()[1]] = ways[3]
            p.hello()
            assert p.command(b"MAIL FROM:<a@b.example>").startswith(b"250")
            assert p.command(b"RCPT TO:<c@d.example>").startswith(b"250")
            assert p.command(b"DATA").startswith(b"354")
            p.send(b"Subject: x\r\n\r\npartial")
            p.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        if not all_closed.wait(WAIT):
            with lock:
                missing = [way for port, way in ports.items() if port not in closes]
            pytest.fail(f"close() did not run for: {', '.join(missing)}")
    with lock:  # the server has stopped: nothing more can come
        assert sorted(closes) == sorted(welcomed)
        assert list(closes.values()) == [1, 1, 1, 1]


def test_close_from_welcome(transport: Transport) -> None:
    calls = Calls()

    class Refuse(Handler):
        def welcome(self, client_ip: str) -> Close:
            return Close()

        def close(self) -> None:
            calls.add("close")

    with transport.serve(Refuse) as server, Peer((server.host, server.port)) as p:
        assert p.reply().startswith(b"421 ")
        assert p.closed()
        calls.wait("close")


def test_reject_from_welcome(transport: Transport) -> None:
    with (
        transport.serve(type("No", (Handler,), {"welcome": lambda self, ip: Reject()})) as server,
        Peer((server.host, server.port)) as p,
    ):
        assert p.reply() == b"554 localhost Error: service refused\r\n"
        assert p.command(b"EHLO client.example").startswith(b"503 5.5.1")
        assert p.command(b"MAIL FROM:<a@b.example>").startswith(b"503 5.5.1")
        assert p.command(b"NOOP").startswith(b"503 5.5.1")
        assert p.command(b"QUIT").startswith(b"221")
        assert p.closed()


def test_async_hooks(transport: Transport) -> None:
    class Async(Handler):
        seen: list[str] = []

        async def mail(self, sender: str, params: MailParams) -> Accept:
            return Accept(f"{sender} async ok")

        async def rcpt(self, recipient: str, params: RcptParams) -> Accept | Reject:
            return Reject() if recipient.startswith("nobody@") else Accept()

        async def data(self, message: Message) -> Accept:
            self.seen.append(self.envelope.sender or "")
            return Accept()

        async def close(self) -> None:
            self.seen.append("closed")

    if not transport.is_async:
        # Not applicable: the threads transport has no event loop to run async hooks on. It
        # must refuse such a handler when the server is made, saying why.
        transport.require()
        with pytest.raises(ValueError, match=r"async.*mail\(\)"):
            Server(Async, ServerOptions(listen=(("127.0.0.1", 0),)), transport=transport.name)
        return
    with transport.serve(Async) as server, Peer((server.host, server.port)) as p:
        p.hello()
        assert p.command(b"MAIL FROM:<a@b.example>") == b"250 2.1.0 a@b.example async ok\r\n"
        assert p.command(b"RCPT TO:<nobody@d.example>").startswith(b"550")
        assert p.command(b"RCPT TO:<c@d.example>").startswith(b"250")
        assert p.command(b"DATA").startswith(b"354")
        p.send(MESSAGE + b".\r\n")
        assert QUEUED.match(p.reply())
        assert p.command(b"QUIT").startswith(b"221")
        assert p.closed()
    assert Async.seen == ["a@b.example", "closed"]


# ====================================================================== concurrency


@pytest.mark.parametrize("hook", ["welcome", "data"])
def test_a_blocked_hook_does_not_delay_other_connections(transport: Transport, hook: str) -> None:
    entered, release = threading.Event(), threading.Event()
    first = threading.Lock()

    class Stuck(Handler):
        def welcome(self, client_ip: str) -> Accept:
            if hook == "welcome" and first.acquire(blocking=False):
                entered.set()
                assert release.wait(WAIT)
            return Accept()

        def data(self, message: Message) -> Accept:
            if hook == "data" and first.acquire(blocking=False):
                entered.set()
                assert release.wait(WAIT)
            return Accept()

    with transport.serve(Stuck) as server:
        address = (server.host, server.port)
        with Peer(address) as a:
            if hook == "data":
                a.hello()
                assert a.command(b"MAIL FROM:<a@b.example>").startswith(b"250")
                assert a.command(b"RCPT TO:<c@d.example>").startswith(b"250")
                assert a.command(b"DATA").startswith(b"354")
                a.send(MESSAGE + b".\r\n")
            assert entered.wait(WAIT)
            # `a` is stuck in its hook: a new connection gets its greeting and a whole
            # transaction meanwhile.
            with Peer(address) as b:
                b.hello()
                assert QUEUED.match(b.send_message())
                assert b.command(b"QUIT").startswith(b"221")
            assert not release.is_set()
            release.set()
            if hook == "welcome":
                a.hello()
                assert QUEUED.match(a.send_message())
            else:
                assert QUEUED.match(a.reply())


def test_blocking_hooks_run_concurrently_up_to_the_pool_size(transport: Transport) -> None:
    n = 4
    barrier = threading.Barrier(n, timeout=WAIT)  # passes only if n data() run at once

    class Meet(Handler):
        def data(self, message: Message) -> Accept:
            barrier.wait()
            return Accept()

    with transport.serve(Meet, workers=n) as server:
        peers = [Peer((server.host, server.port)) for _ in range(n)]
        try:
            for p in peers:
                p.hello()
                assert p.command(b"MAIL FROM:<a@b.example>").startswith(b"250")
                assert p.command(b"RCPT TO:<c@d.example>").startswith(b"250")
                assert p.command(b"DATA").startswith(b"354")
            for p in peers:
                p.send(MESSAGE + b".\r\n")
            replies = [p.reply() for p in peers]
        finally:
            for p in peers:
                p.close()
    assert all(QUEUED.match(r) for r in replies), replies
    assert not barrier.broken


# ====================================================================== limits


def test_max_connections(transport: Transport) -> None:
    with transport.serve(SinkHandler, max_connections=2) as server:
        address = (server.host, server.port)
        with Peer(address) as a, Peer(address) as b:
            a.hello()
            b.hello()
            with Peer(address) as c:
                assert c.reply().startswith(b"421 4.7.0")
                assert c.closed()
            assert a.command(b"NOOP") == b"250 2.0.0 Ok\r\n"
            assert QUEUED.match(b.send_message())
            assert a.command(b"QUIT").startswith(b"221")
            assert a.closed()
        # The slots were freed (the server may see the ends in any order: retry briefly).
        deadline = time.monotonic() + WAIT
        while True:
            with Peer(address) as d:
                greeting = d.reply()
            if greeting.startswith(b"220") or time.monotonic() > deadline:
                break
            time.sleep(0.01)  # polling for a state, not proving concurrency
        assert greeting.startswith(b"220")


def test_max_per_ip_exempts_loopback(transport: Transport) -> None:
    with transport.serve(SinkHandler, max_per_ip=1) as server:
        address = (server.host, server.port)
        with Peer(address) as a, Peer(address) as b, Peer(address) as c:
            for p in (a, b, c):
                assert p.reply().startswith(b"220")


def test_max_per_ip(transport: Transport) -> None:
    ip = local_non_loopback_ipv4()
    if ip is None:
        pytest.skip("no non-loopback local address; test_connection_limits_unit covers it")
    with transport.serve(SinkHandler, listen=((ip, 0),), max_per_ip=2) as server:
        address = (server.host, server.port)
        with Peer(address, source=(ip, 0)) as a, Peer(address, source=(ip, 0)) as b:
            a.hello()
            b.hello()
            with Peer(address, source=(ip, 0)) as c:
                assert c.reply().startswith(b"421 4.7.0")
                assert c.closed()
            assert a.command(b"NOOP") == b"250 2.0.0 Ok\r\n"
            assert b.command(b"NOOP") == b"250 2.0.0 Ok\r\n"


def test_connection_limits_unit() -> None:
    limits = ConnectionLimits(total=4, per_ip=2)
    assert limits.admit("192.0.2.7") is None
    assert limits.admit("192.0.2.7") is None
    assert limits.admit("192.0.2.7") == "too many connections from your address"
    assert limits.admit("::1") is None and limits.admit("::1") is None  # loopback: exempt
    assert limits.admit("127.0.0.1") == "too many connections"  # the total
    limits.release("192.0.2.7")
    assert limits.admit("192.0.2.7") is None


def test_connection_limits_count_an_ipv6_client_by_its_64() -> None:
    """Issue 14: one IPv6 client usually holds a whole /64; counted per address, it could
    take every slot. An IPv4-mapped address counts as its IPv4 address."""
    limits = ConnectionLimits(total=100, per_ip=2)
    assert limits.admit("2001:db8:1:2::1") is None
    assert limits.admit("2001:db8:1:2:ffff:ffff:ffff:ffff") is None
    assert limits.admit("2001:db8:1:2::3") == "too many connections from your address"
    assert limits.admit("2001:db8:1:3::1") is None  # the next /64 is another client
    assert limits.admit("::ffff:192.0.2.7") is None and limits.admit("192.0.2.7") is None
    assert limits.admit("192.0.2.7") == "too many connections from your address"
    limits.release("2001:db8:1:2::1")
    assert limits.admit("2001:db8:1:2::abcd") is None
    assert client_key("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7" == client_key("192.0.2.7")


def test_connection_limits_move_a_proxied_connection_to_its_client() -> None:
    """Behind a trusted proxy, the proxy's address is exempt; the PROXY header's client is
    what the per-IP limit counts."""
    limits = ConnectionLimits(total=100, per_ip=1, exempt=("10.0.0.0/8",))
    assert limits.admit("10.0.0.5") is None and limits.admit("10.0.0.5") is None
    assert limits.move("10.0.0.5", "192.0.2.7")
    assert not limits.move("10.0.0.5", "192.0.2.7")  # the client's one slot is taken
    assert limits.move("10.0.0.5", "2001:db8::1")
    assert limits.active == 2
    limits.release("192.0.2.7")
    limits.release("2001:db8::1")
    assert limits.active == 0
    assert limits.admit("192.0.2.7") is None


def test_idle_timeout(transport: Transport) -> None:
    calls = Calls()

    class Watch(SinkHandler):
        def close(self) -> None:
            calls.add("close")

    with transport.serve(Watch, timeout=0.3) as server, Peer((server.host, server.port)) as p:
        p.hello()
        assert p.reply() == b"421 4.4.2 localhost Error: timeout exceeded\r\n"
        assert p.closed()
        calls.wait("close")


def test_data_timeout(transport: Transport) -> None:
    # The DATA deadline (0.5 s) is far shorter than the idle timeout (60 s), so only the
    # deadline can end this within the test's bound.
    with (
        transport.serve(SinkHandler, timeout=60.0, data_timeout=0.5) as server,
        Peer((server.host, server.port)) as p,
    ):
        p.hello()
        assert p.command(b"MAIL FROM:<a@b.example>").startswith(b"250")
        assert p.command(b"RCPT TO:<c@d.example>").startswith(b"250")
        assert p.command(b"DATA").startswith(b"354")
        # A slow sender: a byte every 50 ms keeps the idle timeout away, not the deadline.
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            readable, _, _ = select.select([p.sock], [], [], 0.05)
            if readable:
                break
            try:
                p.send(b"x")
            except OSError:
                break
        assert p.reply() == b"421 4.4.2 localhost Error: timeout exceeded\r\n"
        assert p.closed()


def test_max_message_size_and_recipients(transport: Transport) -> None:
    cls, messages = keeper()
    config = Config(max_message_size=10_000, max_recipients=2)
    with transport.serve(cls, config=config) as server, Peer((server.host, server.port)) as p:
        assert b"250-SIZE 10000\r\n" in p.hello()
        assert p.command(b"MAIL FROM:<a@b.example> SIZE=10001").startswith(b"552 5.3.4")
        assert p.command(b"MAIL FROM:<a@b.example> SIZE=100").startswith(b"250")
        assert p.command(b"RCPT TO:<c1@d.example>").startswith(b"250")
        assert p.command(b"RCPT TO:<c2@d.example>").startswith(b"250")
        assert p.command(b"RCPT TO:<c3@d.example>") == b"452 4.5.3 Error: too many recipients\r\n"
        assert p.command(b"DATA").startswith(b"354")
        p.send(b"Subject: x\r\n\r\n" + b"z" * 10_000 + b"\r\n.\r\n")
        assert p.reply() == b"552 5.3.4 Error: message too large\r\n"
        assert QUEUED.match(p.send_message(b"Subject: x\r\n\r\n" + b"z" * 9_000 + b"\r\n"))
    assert len(messages) == 1


# ====================================================================== backpressure


@pytest.mark.parametrize("greeted", [True, False], ids=["after-greeting", "before-greeting"])
def test_backpressure_bounds_memory(transport: Transport, greeted: bool) -> None:
    # A client pipelines 20 MB of commands and reads no reply. The server must stop
    # reading (its replies have nowhere to go), so our sends stall and its memory stays flat.
    # Before the greeting too: bytes that arrive while welcome() decides must not pile up
    # either. (Not NOOPs alone: a session of junk commands is ended.)
    total = 20 * 1024 * 1024
    chunk = PIPELINED * (65536 // len(PIPELINED))
    with transport.serve(SinkHandler) as server:
        address = (server.host, server.port)
        before = vm_rss()
        flood = Peer(address, rcvbuf=65536, timeout=0.5)
        try:
            if greeted:
                assert flood.reply().startswith(b"220")
            flood.send(b"EHLO flood.example\r\n")
            sent, stalled = 0, False
            deadline = time.monotonic() + WAIT
            while sent < total and time.monotonic() < deadline:
                try:
                    sent += flood.sock.send(chunk)
                except TimeoutError:  # the server stopped reading: what we want to see
                    stalled = True
                    break
                except OSError as exc:
                    pytest.fail(f"the server dropped the flooding client: {exc}")
            grown = vm_rss() - before
            assert grown < 30 * 1024 * 1024, f"RSS grew by {grown / 2**20:.1f} MB ({sent=})"
            assert stalled, f"the server read all {sent} bytes without ever pushing back"
            with Peer(address) as other:  # the server still serves others meanwhile
                other.hello()
                assert QUEUED.match(other.send_message())
        finally:
            flood.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            flood.close()


# ====================================================================== shutdown


def test_graceful_shutdown(transport: Transport) -> None:
    in_hook, release = threading.Event(), threading.Event()
    calls = Calls()

    class Slow(Handler):
        def data(self, message: Message) -> Accept:
            in_hook.set()
            assert release.wait(WAIT)
            return Accept()

        def close(self) -> None:
            calls.add("close")

    server = transport.server(Slow)
    server.start()
    stopper: threading.Thread | None = None
    try:
        address = (server.host, server.port)
        with Peer(address) as idle, Peer(address) as busy:
            idle.hello()
            busy.hello()
            assert busy.command(b"MAIL FROM:<a@b.example>").startswith(b"250")
            assert busy.command(b"RCPT TO:<c@d.example>").startswith(b"250")
            assert busy.command(b"DATA").startswith(b"354")
            busy.send(MESSAGE + b".\r\n")
            assert in_hook.wait(WAIT)
            stopper = in_thread(server.stop)
            assert idle.reply() == b"421 4.3.2 localhost Service shutting down\r\n"
            assert idle.closed()
            with pytest.raises(OSError) as refused:
                Peer(address).close()
            assert refused.value.errno == errno.ECONNREFUSED
            assert stopper.is_alive()  # stop() waits for the transaction in flight
            release.set()
            assert QUEUED.match(busy.reply())
            assert busy.reply() == b"421 4.3.2 localhost Service shutting down\r\n"
            assert busy.closed()
        stopper.join(WAIT)  # (after our close: the server may linger for it)
        assert not stopper.is_alive()
        assert len(calls.of("close")) == 2
    finally:
        release.set()
        if stopper is None:
            server.stop()


def test_grace_period_cuts_off_a_stuck_hook(transport: Transport) -> None:
    in_hook, release = threading.Event(), threading.Event()
    calls = Calls()

    class Stuck(Handler):
        def data(self, message: Message) -> Accept:
            in_hook.set()
            release.wait(4 * WAIT)
            return Accept()

        def close(self) -> None:
            calls.add("close")

    server = transport.server(Stuck, grace_period=0.5)
    server.start()
    try:
        with Peer((server.host, server.port)) as p:
            p.hello()
            assert p.command(b"MAIL FROM:<a@b.example>").startswith(b"250")
            assert p.command(b"RCPT TO:<c@d.example>").startswith(b"250")
            assert p.command(b"DATA").startswith(b"354")
            p.send(MESSAGE + b".\r\n")
            assert in_hook.wait(WAIT)
            stopper = in_thread(server.stop)
            stopper.join(WAIT)
            assert not stopper.is_alive(), "stop() did not return after the grace period"
            assert p.reply() == b"421 4.3.2 localhost Service shutting down\r\n"
            assert p.closed()
        calls.wait("close")  # the session was still run to its end
    finally:
        release.set()
        server.stop()


# ====================================================================== logging, headers


def test_logging(transport: Transport, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="smtpkit")
    with (
        transport.serve(SinkHandler) as server,
        Peer((server.host, server.port)) as p,
    ):
        p.hello()
        replies = [p.send_message(), p.send_message()]
        assert p.command(b"QUIT").startswith(b"221")
        assert p.closed()
        local = p.sock.getsockname()
    ids = []
    for reply in replies:
        match = QUEUED.match(reply)
        assert match is not None, reply
        ids.append(match.group(1).decode())
    assert len(set(ids)) == 2
    peer = f"[{local[0]}]:{local[1]}"
    lines = [r.getMessage() for r in caplog.records if r.name == "smtpkit"]
    ours = [line for line in lines if peer in line]
    for qid in ids:
        assert len([line for line in ours if qid in line]) == 1, (qid, ours)
    closing = [line for line in ours if line.startswith("disconnect from")]
    assert len(closing) == 1, ours
    assert "messages=2" in closing[0]
    assert len([line for line in ours if line.startswith("connect from")]) == 1, ours


def test_received_header(transport: Transport) -> None:
    cls, messages = keeper()
    with transport.serve(cls) as server, Peer((server.host, server.port)) as p:
        p.hello(b"client.example")
        match = QUEUED.match(p.send_message(MESSAGE))
        assert match is not None
    [message] = messages
    assert message.startswith(b"Received: from client.example ([127.0.0.1])\r\n\tby localhost")
    assert b" with ESMTP id " + match.group(1) + b"\r\n\tfor <c@d.example>; " in message
    assert body_of(message) == MESSAGE
    cls, messages = keeper()
    with (
        transport.serve(cls, received_header=False) as server,
        smtplib.SMTP(server.host, server.port) as client,
    ):
        client.sendmail("a@b.example", ["c@d.example"], MESSAGE)
    assert messages == [MESSAGE]


def test_maildir(transport: Transport, tmp_path: Path) -> None:
    factory = functools.partial(MaildirHandler, tmp_path / "Maildir")
    with (
        transport.serve(factory) as server,
        smtplib.SMTP(server.host, server.port) as client,
    ):
        for i in range(3):
            client.sendmail("a@b.example", ["c@d.example"], b"Subject: %d\r\n\r\nx\r\n" % i)
    new = sorted((tmp_path / "Maildir" / "new").iterdir())
    assert len(new) == 3
    assert list((tmp_path / "Maildir" / "tmp").iterdir()) == []
    bodies = sorted(body_of(path.read_bytes()) for path in new)
    assert bodies == [b"Subject: %d\r\n\r\nx\r\n" % i for i in range(3)]


def test_ipv6(transport: Transport) -> None:
    if not has_ipv6_loopback():
        pytest.skip("this machine has no IPv6 loopback (::1 is not in /proc/net/if_inet6)")
    cls, messages = keeper()
    try:
        server_cm = transport.serve(cls, listen=(("::1", 0),))
        server = server_cm.__enter__()
    except OSError as exc:
        pytest.fail(f"::1 is configured but binding it failed: {exc}")
    try:
        assert server.host == "::1"
        with smtplib.SMTP(server.host, server.port) as client:
            client.sendmail("a@b.example", ["c@d.example"], MESSAGE)
    finally:
        server_cm.__exit__(None, None, None)
    [message] = messages
    assert message.startswith(b"Received: from ") and b"([IPv6:::1])" in message
