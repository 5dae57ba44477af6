"""RelayHandler against smtpkit upstreams we control (real sockets on 127.0.0.1).

Each upstream is a small Handler whose verdicts the test chooses, so every mapping (2xx, 4xx,
5xx at MAIL, RCPT and DATA; unreachable; lost; TLS; AUTH) is checked end to end. The same
relay against real Postfix software is in tests/interop/.
"""

from __future__ import annotations

import contextlib
import functools
import smtplib
import socket
import ssl
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
import trustme
from support import WAIT

from smtp_core import Config
from smtpkit.handlers import (
    Accept,
    Close,
    Handler,
    Message,
    PasswordFile,
    Pipeline,
    Reject,
    RelayHandler,
)
from smtpkit.handlers._relay import upstream_reply, xtext
from smtpkit.handlers.policies import PasswordAuth
from smtpkit.transports import running_server
from smtpkit.transports._pump import Mode, plan_for

pytestmark = pytest.mark.timeout(60)

MESSAGE = b"Subject: hello\r\nFrom: a@example.org\r\n\r\n.a line with a leading dot\r\nbye\r\n"


class Upstream(Handler):
    """Records what it saw; refuses recipients by their local part: bad*, later*."""

    sessions: ClassVar[list[dict[str, Any]]]
    messages: ClassVar[list[tuple[str | None, tuple[str, ...], bytes]]]
    data_verdict: ClassVar[Any] = None
    mail_verdict: ClassVar[Any] = None

    def welcome(self, client_ip: str) -> Any:
        self.record: dict[str, Any] = {"mails": [], "resets": 0, "tls": False, "user": None}
        type(self).sessions.append(self.record)
        return Accept()

    def mail(self, sender: str, params: Any) -> Any:
        self.record["mails"].append((sender, params))
        self.record["tls"] = self.session.tls
        self.record["user"] = self.session.user
        return self.mail_verdict or Accept()

    def rcpt(self, recipient: str, params: Any) -> Any:
        if recipient.startswith("bad"):
            return Reject(550, f"5.1.1 <{recipient}>: Recipient address rejected: User unknown")
        if recipient.startswith("later"):
            return Reject(450, f"4.2.0 <{recipient}>: Recipient address rejected: Greylisted")
        return Accept()

    def data(self, message: Message) -> Any:
        if self.data_verdict is not None:
            return self.data_verdict
        type(self).messages.append((self.envelope.sender, self.envelope.recipients, bytes(message)))
        return Accept()

    def reset(self) -> None:
        self.record["resets"] += 1


def upstream_class(**attrs: Any) -> type[Upstream]:
    """A fresh Upstream subclass, so that tests never share records."""
    namespace: dict[str, Any] = {"sessions": [], "messages": [], **attrs}
    return type("TestUpstream", (Upstream,), namespace)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    return context


@pytest.fixture
def upstream() -> Iterator[tuple[type[Upstream], Any]]:
    cls = upstream_class()
    with running_server(cls) as server:
        yield cls, server


def relay_to(server: Any, **kwargs: Any) -> Any:
    return functools.partial(RelayHandler, server.host, server.port, **kwargs)


def client(server: Any) -> smtplib.SMTP:
    smtp = smtplib.SMTP(server.host, server.port, timeout=WAIT)
    smtp.ehlo("client.example")
    return smtp


def test_relay_hooks_all_run_on_the_worker_pool() -> None:
    plan = plan_for(RelayHandler)
    for hook in ("mail", "rcpt", "data", "reset", "close"):
        assert plan.modes[hook] is Mode.THREAD
    assert plan.modes["welcome"] is Mode.DEFAULT
    assert not plan.offers_auth


@pytest.mark.parametrize("transport", ["asyncio", "threads", "anyio"])
def test_message_passes_through_with_the_upstream_reply(
    upstream: tuple[type[Upstream], Any], transport: str
) -> None:
    cls, up = upstream
    with running_server(relay_to(up), transport=transport) as relay, client(relay) as smtp:
        assert smtp.mail("a@example.org") == (250, b"2.1.0 Ok")
        assert smtp.rcpt("b@example.org") == (250, b"2.1.5 Ok")
        code, text = smtp.data(MESSAGE)
    assert code == 250
    [(sender, rcpts, message)] = cls.messages
    # The client reads the upstream's own queue ID: the verdict is the upstream's.
    upstream_id = message.split(b" id ", 1)[1].split(b"\r\n", 1)[0].decode()
    assert text == f"2.0.0 Ok: queued as {upstream_id}".encode()
    assert (sender, rcpts) == ("a@example.org", ("b@example.org",))
    # What is forwarded is the relay's message: its Received header, then the client's bytes.
    assert message.endswith(MESSAGE)
    assert message.count(b"Received: ") == 2


def test_refused_recipients_are_refused_at_rcpt_time(
    upstream: tuple[type[Upstream], Any],
) -> None:
    cls, up = upstream
    with running_server(relay_to(up)) as relay, client(relay) as smtp:
        smtp.mail("a@example.org")
        assert smtp.rcpt("bad@example.org") == (
            550,
            b"5.1.1 <bad@example.org>: Recipient address rejected: User unknown",
        )
        assert smtp.rcpt("later@example.org") == (
            450,
            b"4.2.0 <later@example.org>: Recipient address rejected: Greylisted",
        )
        assert smtp.rcpt("good@example.org")[0] == 250
        assert smtp.data(MESSAGE)[0] == 250
    [(_, rcpts, _)] = cls.messages
    assert rcpts == ("good@example.org",)


@pytest.mark.parametrize(
    ("verdict", "expected"),
    [
        (Reject(554, "5.7.1 Message rejected: spam"), (554, b"5.7.1 Message rejected: spam")),
        (Reject(451, "4.7.1 Try again later"), (451, b"4.7.1 Try again later")),
        (Reject(552, "5.3.4 Message too big"), (552, b"5.3.4 Message too big")),
    ],
)
def test_data_verdict_of_the_upstream_is_ours(verdict: Reject, expected: tuple[int, bytes]) -> None:
    cls = upstream_class(data_verdict=verdict)
    with running_server(cls) as up, running_server(relay_to(up)) as relay, client(relay) as smtp:
        smtp.mail("a@example.org")
        smtp.rcpt("b@example.org")
        assert smtp.data(MESSAGE) == expected
        # The session goes on, on the same upstream connection.
        assert smtp.mail("c@example.org")[0] == 250
    assert len(cls.sessions) == 1


def test_mail_verdict_of_the_upstream_is_ours() -> None:
    cls = upstream_class(mail_verdict=Reject(553, "5.7.1 <a@example.org>: Sender rejected"))
    with running_server(cls) as up, running_server(relay_to(up)) as relay, client(relay) as smtp:
        assert smtp.mail("a@example.org") == (553, b"5.7.1 <a@example.org>: Sender rejected")
        assert smtp.rcpt("b@example.org")[0] == 503  # our engine: no MAIL accepted


def test_unreachable_upstream_gives_451() -> None:
    with socket.socket() as unused:  # a port that nobody listens on
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    factory = functools.partial(RelayHandler, "127.0.0.1", port, connect_timeout=5)
    with running_server(factory) as relay, client(relay) as smtp:
        assert smtp.mail("a@example.org") == (451, b"4.4.1 Error: relay host unavailable")
        assert smtp.mail("a@example.org")[0] == 451  # and again, not a 503
        assert smtp.noop()[0] == 250


def test_upstream_refusing_the_connection_gives_451() -> None:
    class Refusing(Handler):
        def welcome(self, client_ip: str) -> Any:
            return Reject()

    with running_server(Refusing) as up, running_server(relay_to(up)) as relay, client(relay) as c:
        assert c.mail("a@example.org")[0] == 451


def test_upstream_421_is_passed_on_and_closes() -> None:
    class Closing(Upstream):
        def rcpt(self, recipient: str, params: Any) -> Any:
            return Close(421, "4.3.2 Service shutting down")

    cls = type("C", (Closing,), {"sessions": [], "messages": []})
    with running_server(cls) as up, running_server(relay_to(up)) as relay:
        smtp = client(relay)
        smtp.mail("a@example.org")
        assert smtp.rcpt("b@example.org") == (421, b"4.3.2 Service shutting down")
        with pytest.raises(smtplib.SMTPServerDisconnected):
            smtp.noop()
        smtp.close()


def test_lost_upstream_gives_451_and_the_next_mail_reconnects() -> None:
    raw = RawUpstream({"EHLO": b"250 raw\r\n", "RCPT": None})  # hangs up at RCPT
    try:
        factory = functools.partial(RelayHandler, "127.0.0.1", raw.port)
        with running_server(factory) as relay, client(relay) as smtp:
            assert smtp.mail("a@example.org")[0] == 250
            assert smtp.rcpt("b@example.org") == (
                451,
                b"4.4.2 Error: lost connection with relay host",
            )
            smtp.rset()
            assert smtp.mail("a@example.org")[0] == 250  # on a new connection
    finally:
        raw.close()
    assert raw.connections == 2


def test_stale_kept_connection_is_replaced() -> None:
    """The upstream times the idle connection out (421 4.4.2, close); the next MAIL of the same
    client session is relayed over a fresh connection, invisibly to the client."""
    closed = threading.Event()

    class Timing(Upstream):
        def close(self) -> None:
            closed.set()

    cls = type("T", (Timing,), {"sessions": [], "messages": []})
    up = running_server(cls, timeout=0.3)
    with up as upstream, running_server(relay_to(upstream)) as relay, client(relay) as smtp:
        smtp.mail("a@example.org")
        smtp.rcpt("b@example.org")
        assert smtp.data(MESSAGE)[0] == 250
        assert closed.wait(WAIT)  # the upstream gave up on the idle relay
        assert smtp.mail("c@example.org") == (250, b"2.1.0 Ok")
        smtp.rcpt("d@example.org")
        assert smtp.data(MESSAGE)[0] == 250
    assert len(cls.sessions) == 2
    assert [m[0] for m in cls.messages] == ["a@example.org", "c@example.org"]


def test_one_upstream_connection_per_client_session_and_rset_is_forwarded(
    upstream: tuple[type[Upstream], Any],
) -> None:
    cls, up = upstream
    with running_server(relay_to(up)) as relay, client(relay) as smtp:
        for n in range(3):
            smtp.mail(f"s{n}@example.org")
            smtp.rcpt("b@example.org")
            assert smtp.data(MESSAGE)[0] == 250
        smtp.mail("x@example.org")
        smtp.rset()
        smtp.mail("y@example.org")  # after RSET
        smtp.ehlo("again.example")  # EHLO resets too; the relay resets upstream at MAIL
        smtp.mail("z@example.org")
        smtp.rcpt("b@example.org")
        assert smtp.data(MESSAGE)[0] == 250
    [record] = cls.sessions
    assert [m[0] for m in record["mails"]] == [
        "s0@example.org",
        "s1@example.org",
        "s2@example.org",
        "x@example.org",
        "y@example.org",
        "z@example.org",
    ]
    assert record["resets"] == 2
    assert [m[0] for m in cls.messages] == [
        "s0@example.org",
        "s1@example.org",
        "s2@example.org",
        "z@example.org",
    ]


def test_null_sender_and_mail_parameters_pass_through(
    upstream: tuple[type[Upstream], Any],
) -> None:
    cls, up = upstream
    with running_server(relay_to(up)) as relay, client(relay) as smtp:
        assert smtp.mail("", ["BODY=8BITMIME", "SIZE=100", "RET=HDRS", "ENVID=a+2Bb"])[0] == 250
        assert smtp.rcpt("b@example.org", ["NOTIFY=FAILURE,DELAY", "ORCPT=rfc822;b+2B@x"])[0] == 250
        assert smtp.data(b"Subject: caf\xc3\xa9\r\n\r\n8-bit body \xe2\x82\xac\r\n")[0] == 250
        # SMTPUTF8: a UTF-8 address goes through as it is.
        smtp.command_encoding = "utf-8"
        assert smtp.docmd("MAIL", "FROM:<jos\u00e9@example.org> SMTPUTF8")[0] == 250
        assert smtp.docmd("RCPT", "TO:<\u00fc@example.org>")[0] == 250
        assert smtp.data(b"Subject: utf8\r\n\r\nhi\r\n")[0] == 250
    [record] = cls.sessions
    (sender1, params1), (sender2, params2) = record["mails"]
    assert sender1 == ""
    assert (params1.body, params1.size, params1.ret, params1.envid) == (
        "8BITMIME",
        100,
        "HDRS",
        "a+b",
    )
    assert sender2 == "jos\u00e9@example.org"
    assert params2.smtputf8
    assert cls.messages[0][2].endswith(b"8-bit body \xe2\x82\xac\r\n")
    assert cls.messages[1][1] == ("\u00fc@example.org",)


def test_smtputf8_refused_when_the_upstream_lacks_it() -> None:
    cls = upstream_class()
    up = running_server(cls, config=Config(smtputf8=False))
    with up as upstream, running_server(relay_to(upstream)) as relay, client(relay) as smtp:
        smtp.command_encoding = "utf-8"
        code, text = smtp.docmd("MAIL", "FROM:<jos\u00e9@example.org> SMTPUTF8")
        assert (code, text[:5]) == (553, b"5.6.7")
        # Not the connection's fault: plain mail still goes through it.
        assert smtp.docmd("MAIL", "FROM:<a@example.org>")[0] == 250
    assert len(cls.sessions) == 1


def test_starttls_when_offered(
    upstream: tuple[type[Upstream], Any], server_tls: ssl.SSLContext
) -> None:
    cls = upstream_class()
    with running_server(cls, ssl_context=server_tls) as up:
        with running_server(relay_to(up)) as relay, client(relay) as smtp:
            smtp.mail("a@example.org")
        with running_server(relay_to(up, starttls="off")) as relay, client(relay) as smtp:
            smtp.mail("a@example.org")
    assert [s["tls"] for s in cls.sessions] == [True, False]


def test_starttls_required_but_not_offered_gives_451(
    upstream: tuple[type[Upstream], Any],
) -> None:
    cls, up = upstream
    with running_server(relay_to(up, starttls="required")) as relay, client(relay) as smtp:
        assert smtp.mail("a@example.org") == (
            451,
            b"4.7.4 Error: relay host does not offer STARTTLS",
        )
    assert cls.sessions[0]["mails"] == []


def test_starttls_verifies_with_a_given_context(ca: trustme.CA, server_tls: ssl.SSLContext) -> None:
    cls = upstream_class()
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    with running_server(cls, ssl_context=server_tls) as up:
        good = relay_to(up, starttls="required", ssl_context=trusting)
        with running_server(good) as relay, client(relay) as smtp:
            assert smtp.mail("a@example.org")[0] == 250
        strict = relay_to(up, starttls="required", ssl_context=ssl.create_default_context())
        with running_server(strict) as relay, client(relay) as smtp:
            assert smtp.mail("a@example.org") == (
                451,
                b"4.7.5 Error: TLS handshake with relay host failed",
            )


def test_auth_to_the_upstream(server_tls: ssl.SSLContext) -> None:
    cls = upstream_class()
    users = PasswordFile({"relay": "s3cret"})
    factory = Pipeline(PasswordAuth(users), deliver=cls)
    with running_server(factory, ssl_context=server_tls) as up:
        good = relay_to(up, username="relay", password="s3cret")
        with running_server(good) as relay, client(relay) as smtp:
            assert smtp.mail("a@example.org")[0] == 250
        bad = relay_to(up, username="relay", password="wrong")
        with running_server(bad) as relay, client(relay) as smtp:
            assert smtp.mail("a@example.org") == (
                451,
                b"4.7.0 Error: relay host refused our credentials",
            )
    assert cls.sessions[0]["user"] == "relay"


def test_no_credentials_in_plaintext_unless_allowed() -> None:
    cls = upstream_class()
    users = PasswordFile({"relay": "s3cret"})
    plaintext = Config(auth_allow_plaintext=True)
    with running_server(Pipeline(PasswordAuth(users), deliver=cls), config=plaintext) as up:
        refused = relay_to(up, username="relay", password="s3cret")
        with running_server(refused) as relay, client(relay) as smtp:
            assert smtp.mail("a@example.org")[0] == 451
        allowed = relay_to(up, username="relay", password="s3cret", allow_plaintext_auth=True)
        with running_server(allowed) as relay, client(relay) as smtp:
            assert smtp.mail("a@example.org")[0] == 250
    assert [s["user"] for s in cls.sessions if s["mails"]] == ["relay"]


class RawUpstream:
    """A scripted upstream on a raw socket: answers each command from `replies`."""

    def __init__(
        self, replies: dict[str, bytes | None], greeting: bytes = b"220 raw ESMTP\r\n"
    ) -> None:
        self.replies = replies
        self.connections = 0
        self.greeting = greeting
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self.session, args=(sock,), daemon=True).start()

    def session(self, sock: socket.socket) -> None:
        with contextlib.suppress(OSError), sock, sock.makefile("rb") as lines:
            sock.sendall(self.greeting)
            in_data = False
            for line in lines:
                if in_data:
                    if line == b".\r\n":
                        in_data = False
                        sock.sendall(self.replies.get(".") or b"250 ok\r\n")
                    continue
                verb = line.split(b" ", 1)[0].strip().upper().decode("ascii", "replace")
                reply = self.replies.get(verb, b"250 ok\r\n")
                if reply is None:  # hang up
                    break
                sock.sendall(reply)
                if verb == "DATA" and reply.startswith(b"354"):
                    in_data = True
                if verb == "QUIT":
                    break

    def close(self) -> None:
        self.listener.close()


@pytest.mark.parametrize(
    ("replies", "expected"),
    [
        # Multi-line replies stay multi-line; the enhanced code is kept.
        (
            {".": b"554-5.7.1 first line\r\n554-5.7.1 second line\r\n554 5.7.1 last\r\n"},
            (554, b"5.7.1 first line\n5.7.1 second line\n5.7.1 last"),
        ),
        # An upstream without enhanced codes gets our X.0.0.
        ({".": b"452 mailbox full\r\n"}, (452, b"4.0.0 mailbox full")),
        # The reply to DATA itself (not 354) is the verdict.
        ({"DATA": b"554 no valid recipients\r\n"}, (554, b"5.0.0 no valid recipients")),
        # Garbage is never passed on, nor is any Python text.
        ({".": b"what is this\r\n"}, (451, b"4.3.0 Error: internal relay error")),
    ],
)
def test_raw_upstream_replies(
    replies: dict[str, bytes | None], expected: tuple[int, bytes]
) -> None:
    raw = RawUpstream({"EHLO": b"250-raw\r\n250 8BITMIME\r\n", "DATA": b"354 go\r\n", **replies})
    try:
        factory = functools.partial(RelayHandler, "127.0.0.1", raw.port)
        with running_server(factory) as relay, client(relay) as smtp:
            assert smtp.mail("a@example.org")[0] == 250
            assert smtp.rcpt("b@example.org")[0] == 250
            assert smtp.data(MESSAGE) == expected
    finally:
        raw.close()


def test_opportunistic_tls_falls_back_to_plaintext_when_the_handshake_fails() -> None:
    # The raw upstream says 220 to STARTTLS, then talks plaintext: the handshake fails.
    raw = RawUpstream({"EHLO": b"250-raw\r\n250 STARTTLS\r\n", "STARTTLS": b"220 go\r\n"})
    try:
        opportunistic = functools.partial(RelayHandler, "127.0.0.1", raw.port, timeout=5)
        with running_server(opportunistic) as relay, client(relay) as smtp:
            assert smtp.mail("a@example.org")[0] == 250
        assert raw.connections == 2
        required = functools.partial(
            RelayHandler, "127.0.0.1", raw.port, starttls="required", timeout=5
        )
        with running_server(required) as relay, client(relay) as smtp:
            assert smtp.mail("a@example.org")[0] == 451
    finally:
        raw.close()


def test_upstream_that_hangs_times_out_with_451() -> None:
    raw = RawUpstream({"EHLO": b"250 raw\r\n", "RCPT": b""})  # never answers RCPT
    try:
        factory = functools.partial(RelayHandler, "127.0.0.1", raw.port, timeout=0.5)
        with running_server(factory) as relay, client(relay) as smtp:
            assert smtp.mail("a@example.org")[0] == 250
            assert smtp.rcpt("b@example.org") == (
                451,
                b"4.4.2 Error: lost connection with relay host",
            )
    finally:
        raw.close()


def test_a_slow_upstream_does_not_block_other_clients() -> None:
    """While one client's message waits on the upstream, other clients are served: the relay
    blocks a worker thread, never the event loop."""
    entered = threading.Event()
    release = threading.Event()

    class Slow(Upstream):
        def data(self, message: Message) -> Any:
            entered.set()
            release.wait(WAIT)
            return Accept()

    cls = type("S", (Slow,), {"sessions": [], "messages": []})
    with running_server(cls) as up, running_server(relay_to(up)) as relay:
        results: list[Any] = []

        def send() -> None:
            with client(relay) as smtp:
                smtp.mail("a@example.org")
                smtp.rcpt("b@example.org")
                results.append(smtp.data(MESSAGE)[0])

        sender = threading.Thread(target=send)
        sender.start()
        try:
            assert entered.wait(WAIT)
            with client(relay) as other:  # greeting, EHLO, MAIL through the relay
                assert other.noop()[0] == 250
                assert other.mail("c@example.org")[0] == 250
        finally:
            release.set()
            sender.join(WAIT)
        assert results == [250]


def test_upstream_reply_and_xtext() -> None:
    reply = upstream_reply(250, b"2.0.0 Ok: queued as X")
    assert (reply.code, reply.text, reply.enhanced) == (250, ("Ok: queued as X",), "2.0.0")
    reply = upstream_reply(550, b"mailbox unavailable")
    assert (reply.text, reply.enhanced) == (("mailbox unavailable",), "5.0.0")
    # An enhanced code of the wrong class is text, not a code.
    assert upstream_reply(450, b"5.1.1 odd").enhanced == "4.0.0"
    assert xtext("a+b=c d\u00e9") == "a+2Bb+3Dc+20d+C3+A9"


def test_constructor_checks() -> None:
    with pytest.raises(ValueError):
        RelayHandler("h", starttls="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        RelayHandler("h", username="u")
    with pytest.raises(ValueError):
        RelayHandler("h", timeout=0)


def test_cli_relay_handler(tmp_path: Any) -> None:
    from smtpkit.transports._cli import CLIError, parse_serve

    command = parse_serve(["--handler", "relay", "--relay", "mx.example.net:2525"])
    assert isinstance(command.factory, Pipeline)  # with relay control (tests/test_cli_policies.py)
    factory = command.factory.deliver
    assert isinstance(factory, functools.partial)
    assert factory.func is RelayHandler
    assert factory.args == ("mx.example.net", 2525)
    assert factory.keywords["starttls"] == "opportunistic"
    secret = tmp_path / "relay-auth"
    secret.write_text("# smarthost login\nme@example.net:pa:ss word\n")
    command = parse_serve(
        [
            "--handler=relay",
            "--relay=mx.example.net",
            "--relay-starttls=required",
            f"--relay-auth={secret}",
        ]
    )
    handler = command.factory().deliverer  # type: ignore[attr-defined]
    assert isinstance(handler, RelayHandler)
    assert (handler.host, handler.port, handler.starttls) == ("mx.example.net", 25, "required")
    assert (handler.username, handler.password) == ("me@example.net", "pa:ss word")
    with pytest.raises(CLIError, match="needs --relay"):
        parse_serve(["--handler", "relay"])
    with pytest.raises(CLIError, match="--relay-starttls is for --handler relay"):
        parse_serve(["--handler", "sink", "--relay-starttls", "off"])
    with pytest.raises(CLIError, match="relay-auth"):
        parse_serve(["--handler", "relay", "--relay", "h:25", "--relay-auth", str(tmp_path)])


def _big_message() -> bytes:
    """Over the spool threshold (so the relay streams it from a file), with dot lines and
    a final-dot look-alike at many offsets, so piece boundaries fall everywhere."""
    lines = [b"Subject: big\r\n", b"\r\n"]
    for i in range(100_000):
        lines.append(b"." * (i % 3) + b"line %06d\r\n" % i)
        if i % 997 == 0:
            lines.append(b".\r\n")  # a lone dot line: must be stuffed going out
    return b"".join(lines)


@pytest.mark.parametrize("chunking", [True, False], ids=["BDAT", "DATA"])
def test_a_spooled_message_is_streamed_whole_by_bdat_or_stuffed_data(
    chunking: bool, tmp_path: Any
) -> None:
    """CHUNKING upstream: BDAT chunks; otherwise dot-stuffed DATA, written by the relay itself.
    Either way the upstream gets exactly the message, dot lines and all."""
    cls = upstream_class()
    body = _big_message()
    assert len(body) > 1 << 20
    with (
        running_server(cls, config=Config(chunking=chunking)) as up,
        running_server(relay_to(up), spool_threshold=64 * 1024, spool_dir=str(tmp_path)) as relay,
        client(relay) as smtp,
    ):
        smtp.sendmail("a@example.org", ["b@example.org"], body)
        smtp.sendmail("a@example.org", ["b@example.org"], b".")
        [(_, _, first), (_, _, second)] = cls.messages
    assert first.endswith(body)  # after the relay's and the upstream's Received: headers
    assert second.endswith(b"\r\n.\r\n")  # a lone dot line survives, unstuffed
    assert second.count(b"\r\n.") == 1
    assert not any(tmp_path.rglob("*/*"))  # the relay's spool files are gone
