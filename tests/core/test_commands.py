"""Each command on its own: the events it produces and the exact replies."""

from __future__ import annotations

import dataclasses

import pytest
from helpers import (
    ENVELOPE,
    FEEDERS,
    FULL,
    codes,
    connect,
    receive_and_get,
    reject,
    replies,
    session,
)

from smtp_core import (
    Accept,
    Close,
    Closed,
    CloseReason,
    Config,
    Connected,
    Hello,
    MailFrom,
    MailParams,
    Quit,
    RcptParams,
    RcptTo,
    Reply,
    Reset,
    ServerConnection,
    State,
)

ALL_EXTENSIONS = [
    "PIPELINING",
    "SIZE 33554432",
    "8BITMIME",
    "SMTPUTF8",
    "ENHANCEDSTATUSCODES",
    "CHUNKING",
    "DSN",
    "STARTTLS",
    "AUTH PLAIN LOGIN",
]


# ---------------------------------------------------------------- HELO / EHLO


@pytest.mark.parametrize("feed", FEEDERS)
def test_ehlo_lists_every_extension(feed: str) -> None:
    conn = connect()
    events, wire = FEEDERS[feed](conn, b"EHLO client.example\r\nRSET\r\nRS")
    assert events == [Hello(hostname="client.example", extended=True), Reset()]
    assert wire == (
        b"250-mx.example.org\r\n"
        + b"".join(b"250-" + ext.encode() + b"\r\n" for ext in ALL_EXTENSIONS[:-1])
        + b"250 AUTH PLAIN LOGIN\r\n"
        + b"250 2.0.0 Ok\r\n"
    )
    assert conn.state is State.READY
    assert conn.helo_name == "client.example"
    assert conn.esmtp


@pytest.mark.parametrize(
    ("switch", "keyword"),
    [
        ("pipelining", "PIPELINING"),
        ("size", "SIZE 33554432"),
        ("eightbitmime", "8BITMIME"),
        ("smtputf8", "SMTPUTF8"),
        ("enhanced_status_codes", "ENHANCEDSTATUSCODES"),
        ("chunking", "CHUNKING"),
        ("dsn", "DSN"),
        ("tls_available", "STARTTLS"),
    ],
)
def test_each_config_switch_controls_its_extension(switch: str, keyword: str) -> None:
    for on in (True, False):
        config = dataclasses.replace(FULL, **{switch: on})
        _, wire = receive_and_get(connect(config), b"EHLO c.example\r\n")
        [(code, lines)] = replies(wire)
        assert code == 250
        assert lines[1:] == [e for e in ALL_EXTENSIONS if on or e != keyword]


def test_size_advertises_the_configured_limit() -> None:
    _, wire = receive_and_get(connect(Config(max_message_size=1000)), b"EHLO c\r\n")
    assert b"250-SIZE 1000\r\n" in wire


@pytest.mark.parametrize(
    ("mechanisms", "tls", "plaintext", "advertised"),
    [
        ((), True, True, None),
        (("PLAIN",), False, False, None),
        (("PLAIN",), True, False, "AUTH PLAIN"),
        (("LOGIN", "PLAIN"), False, True, "AUTH LOGIN PLAIN"),
        (("LOGIN",), True, True, "AUTH LOGIN"),
    ],
)
def test_auth_is_advertised_with_mechanisms_and_tls_or_plaintext(
    mechanisms: tuple[str, ...], tls: bool, plaintext: bool, advertised: str | None
) -> None:
    config = Config(auth_mechanisms=mechanisms, auth_allow_plaintext=plaintext)
    conn = connect(config, tls=tls)
    _, wire = receive_and_get(conn, b"EHLO c\r\n")
    auth = [line for line in replies(wire)[0][1] if line.startswith("AUTH")]
    assert auth == ([advertised] if advertised else [])
    assert conn.auth_offered is (advertised is not None)


def test_ehlo_with_everything_off_is_a_single_line() -> None:
    config = Config(
        pipelining=False,
        size=False,
        eightbitmime=False,
        smtputf8=False,
        enhanced_status_codes=False,
        chunking=False,
        dsn=False,
    )
    _, wire = receive_and_get(connect(config), b"EHLO c\r\n")
    assert wire == b"250 localhost\r\n"


def test_helo_has_no_extensions() -> None:
    conn = connect()
    events, wire = receive_and_get(conn, b"HELO client.example\r\n")
    assert events == [Hello(hostname="client.example", extended=False)]
    assert wire == b"250 mx.example.org\r\n"
    assert conn.helo_name == "client.example"
    assert not conn.esmtp


@pytest.mark.parametrize("verb", [b"HELO", b"EHLO", b"helo", b"eHlO"])
def test_hello_without_hostname_is_501(verb: bytes) -> None:
    conn = connect()
    events, wire = receive_and_get(conn, verb + b"\r\n" + verb + b" \r\n")
    assert events == []
    assert wire == (b"501 5.5.4 Syntax: " + verb.upper() + b" hostname\r\n") * 2
    assert conn.state is State.GREETED


@pytest.mark.parametrize(
    ("answer", "wire"),
    [
        (Accept("pleased to meet you"), b"250-mx.example.org pleased to meet you\r\n"),
        (Accept("mx.example.org hi"), b"250-mx.example.org hi\r\n"),
        (Accept(""), b"250-mx.example.org\r\n"),
        (Reply(code=250, text=("x", "ignored")), b"250-mx.example.org x\r\n"),
    ],
)
def test_hello_accept_text(answer: Accept | Reply, wire: bytes) -> None:
    conn = connect()
    _, out = receive_and_get(conn, b"EHLO c\r\n", lambda e: answer)
    assert out.startswith(wire)


def test_rejected_hello_leaves_no_hello_behind() -> None:
    conn = session()
    _, wire = receive_and_get(conn, b"EHLO other.example\r\nMAIL FROM:<>\r\n", reject(Hello))
    assert wire == (
        b"550 5.7.1 Error: HELO/EHLO rejected\r\n503 5.5.1 Error: send HELO/EHLO first\r\n"
    )
    assert conn.state is State.GREETED
    assert conn.helo_name is None
    assert not conn.esmtp


def test_hello_close() -> None:
    conn = connect()
    events, wire = receive_and_get(conn, b"EHLO c\r\nNOOP\r\n", reject(Hello, answer=Close()))
    assert wire == b"421 4.7.0 mx.example.org Error: closing connection\r\n"
    assert events[-1] == Closed(reason=CloseReason.REFUSED)


def test_ehlo_resets_the_transaction() -> None:
    conn = session()
    receive_and_get(conn, ENVELOPE)
    assert conn.state is State.RCPT
    events, wire = receive_and_get(conn, b"EHLO again.example\r\nRCPT TO:<c@example.org>\r\n")
    assert events == [Hello(hostname="again.example", extended=True)]
    assert codes(wire) == [250, 503]
    assert conn.state is State.READY
    assert conn.sender is None
    assert conn.recipients == ()


def test_helo_after_ehlo_switches_off_esmtp() -> None:
    conn = session()
    _, wire = receive_and_get(conn, b"HELO c\r\nMAIL FROM:<a@example.org> BODY=8BITMIME\r\n")
    assert wire == b"250 mx.example.org\r\n555 5.5.4 Error: parameters need EHLO\r\n"


# ---------------------------------------------------------------- MAIL / RCPT


@pytest.mark.parametrize("feed", FEEDERS)
def test_mail_and_rcpt(feed: str) -> None:
    conn = session()
    events, wire = FEEDERS[feed](conn, ENVELOPE + b"NOOP\r\nNO")
    assert events == [
        MailFrom(sender="alice@example.org", params=MailParams()),
        RcptTo(recipient="bob@example.org", params=RcptParams()),
    ]
    assert wire == b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.0.0 Ok\r\n"
    assert conn.sender == "alice@example.org"
    assert conn.recipients == ("bob@example.org",)
    assert conn.state is State.RCPT


@pytest.mark.parametrize(
    ("line", "sender"),
    [
        (b"MAIL FROM:<>", ""),
        (b"mail from:<a@example.org>", "a@example.org"),
        (b"MAIL FROM: <a@example.org>", "a@example.org"),
        (b"MAIL FROM:a@example.org", "a@example.org"),
        (b"MAIL FROM:<@relay.example,@r2.example:a@example.org>", "a@example.org"),
        (b'MAIL FROM:<"john doe"@example.org>', '"john doe"@example.org'),
        (b'MAIL FROM:<"a>b"@example.org>', '"a>b"@example.org'),
        (b"MAIL FROM:<a@[192.0.2.1]>", "a@[192.0.2.1]"),
        (b"MAIL FROM:<a.b+tag@sub.example.org>", "a.b+tag@sub.example.org"),
    ],
)
def test_mail_from_syntax_accepted(line: bytes, sender: str) -> None:
    events, wire = receive_and_get(session(), line + b"\r\n")
    assert events == [MailFrom(sender=sender, params=MailParams())]
    assert wire == b"250 2.1.0 Ok\r\n"


@pytest.mark.parametrize(
    ("line", "wire"),
    [
        (b"MAIL", b"501 5.5.4 Syntax: MAIL FROM:<address>\r\n"),
        (b"MAIL TO:<a@example.org>", b"501 5.5.4 Syntax: MAIL FROM:<address>\r\n"),
        (b"MAIL FROM:<a@example.org", b"501 5.1.7 Error: bad address syntax\r\n"),
        (b"MAIL FROM:<a@example.org>x", b"501 5.1.7 Error: bad address syntax\r\n"),
        (b"MAIL FROM:<a b@example.org>", b"501 5.1.7 Error: bad address syntax\r\n"),
        (b"MAIL FROM:<a@@example.org>", b"501 5.1.7 Error: bad address syntax\r\n"),
        (b"MAIL FROM:<@relay.example>", b"501 5.1.7 Error: bad address syntax\r\n"),
        (b"MAIL FROM:<a@-bad.example>", b"501 5.1.7 Error: bad address syntax\r\n"),
        (b"MAIL FROM:<a\tb@example.org>", b"501 5.1.7 Error: bad address syntax\r\n"),
        (b"MAIL FROM:<" + b"a" * 300 + b"@x.org>", b"501 5.1.7 Error: bad address syntax\r\n"),
        (b"MAIL FROM:<a@ex\x00ample.org>", b"500 5.5.2 Error: bad character in command\r\n"),
        (b"MAIL FROM:<a@ex\xffample.org>", b"500 5.5.2 Error: command is not valid UTF-8\r\n"),
    ],
)
def test_mail_from_syntax_errors(line: bytes, wire: bytes) -> None:
    conn = session()
    events, out = receive_and_get(conn, line + b"\r\n")
    assert events == []
    assert out == wire
    assert conn.state is State.READY


@pytest.mark.parametrize(
    ("line", "wire"),
    [
        (b"RCPT", b"501 5.5.4 Syntax: RCPT TO:<address>\r\n"),
        (b"RCPT FROM:<a@example.org>", b"501 5.5.4 Syntax: RCPT TO:<address>\r\n"),
        (b"RCPT TO:<>", b"501 5.1.3 Error: empty address\r\n"),
        (b"RCPT TO:<bad>", b"501 5.1.3 Error: bad address syntax\r\n"),
    ],
)
def test_rcpt_to_syntax_errors(line: bytes, wire: bytes) -> None:
    conn = session()
    receive_and_get(conn, b"MAIL FROM:<a@example.org>\r\n")
    events, out = receive_and_get(conn, line + b"\r\n")
    assert events == []
    assert out == wire
    assert conn.state is State.MAIL


@pytest.mark.parametrize("line", [b"RCPT TO:<postmaster>", b"RCPT TO:<PostMaster>"])
def test_rcpt_to_postmaster_without_domain(line: bytes) -> None:
    conn = session()
    receive_and_get(conn, b"MAIL FROM:<a@example.org>\r\n")
    events, wire = receive_and_get(conn, line + b"\r\n")
    assert isinstance(events[0], RcptTo)
    assert wire == b"250 2.1.5 Ok\r\n"


def test_rejected_mail_and_rcpt() -> None:
    conn = session()
    _, wire = receive_and_get(conn, b"MAIL FROM:<a@example.org>\r\n", reject(MailFrom))
    assert wire == b"550 5.7.1 Error: sender rejected\r\n"
    assert conn.state is State.READY
    _, wire = receive_and_get(conn, ENVELOPE, reject(RcptTo))
    assert wire == b"250 2.1.0 Ok\r\n550 5.7.1 Error: recipient rejected\r\n"
    assert conn.state is State.MAIL
    assert conn.recipients == ()


@pytest.mark.parametrize("event_type", [MailFrom, RcptTo])
def test_close_answer_to_mail_and_rcpt(event_type: type) -> None:
    conn = session()
    events, wire = receive_and_get(conn, ENVELOPE, reject(event_type, answer=Close()))
    assert wire.endswith(b"421 4.7.0 mx.example.org Error: closing connection\r\n")
    assert events[-1] == Closed(reason=CloseReason.REFUSED)


# ---------------------------------------------------------------- DATA


def test_data_without_rcpt_is_503() -> None:
    conn = session()
    _, wire = receive_and_get(conn, b"DATA\r\nMAIL FROM:<a@example.org>\r\nDATA\r\n")
    assert wire == (
        b"503 5.5.1 Error: need MAIL command\r\n"
        b"250 2.1.0 Ok\r\n"
        b"503 5.5.1 Error: need RCPT command\r\n"
    )


def test_data_after_only_rejected_recipients_is_554() -> None:
    conn = session()
    data = b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nRCPT TO:<c@x.org>\r\nDATA\r\n"
    _, wire = receive_and_get(conn, data, reject(RcptTo))
    assert codes(wire) == [250, 550, 550, 554]
    assert wire.endswith(b"554 5.5.1 Error: no valid recipients\r\n")
    assert conn.state is State.MAIL


def test_data_with_argument_is_501() -> None:
    conn = session()
    _, wire = receive_and_get(conn, ENVELOPE + b"DATA now\r\n")
    assert wire.endswith(b"501 5.5.4 Syntax: DATA\r\n")
    assert conn.state is State.RCPT


# ---------------------------------------------------------------- RSET, NOOP, HELP, VRFY, EXPN


def test_rset_resets_and_emits_reset() -> None:
    conn = session()
    receive_and_get(conn, ENVELOPE)
    events, wire = receive_and_get(conn, b"RSET\r\n")
    assert events == [Reset()]
    assert wire == b"250 2.0.0 Ok\r\n"
    assert conn.state is State.READY
    assert conn.sender is None
    assert conn.recipients == ()
    # The session (HELO) survives: a new transaction may start at once.
    _, wire = receive_and_get(conn, b"MAIL FROM:<a@example.org>\r\n")
    assert wire == b"250 2.1.0 Ok\r\n"


def test_rset_before_hello_and_with_argument() -> None:
    conn = connect()
    events, wire = receive_and_get(conn, b"RSET\r\nRSET now\r\n")
    assert events == [Reset()]
    assert wire == b"250 2.0.0 Ok\r\n501 5.5.4 Syntax: RSET\r\n"
    assert conn.state is State.GREETED


@pytest.mark.parametrize("line", [b"NOOP", b"noop", b"NOOP anything at all"])
def test_noop(line: bytes) -> None:
    conn = session()
    receive_and_get(conn, ENVELOPE)
    events, wire = receive_and_get(conn, line + b"\r\n")
    assert (events, wire) == ([], b"250 2.0.0 Ok\r\n")
    assert conn.state is State.RCPT


HELP_BASE = "HELO EHLO MAIL RCPT DATA BDAT RSET NOOP HELP VRFY QUIT"


def help_commands(wire: bytes) -> str:
    [(code, [text])] = replies(wire)
    assert code == 214
    return text.removeprefix("2.0.0 Commands: ")


@pytest.mark.parametrize("feed", FEEDERS)
def test_help_lists_the_commands(feed: str) -> None:
    _, wire = FEEDERS[feed](connect(), b"HELP\r\nHELP MAIL\r\n")
    text = b"214 2.0.0 Commands: " + HELP_BASE.encode() + b" STARTTLS AUTH\r\n"
    assert wire == text * 2


@pytest.mark.parametrize(
    ("config", "tls", "listed"),
    [
        (FULL, False, HELP_BASE + " STARTTLS AUTH"),
        # Inside TLS, STARTTLS is no longer offered.
        (FULL, True, HELP_BASE + " AUTH"),
        (Config(), False, HELP_BASE),
        # AUTH needs TLS unless plaintext is allowed: before STARTTLS only STARTTLS is listed.
        (Config(tls_available=True, auth_mechanisms=("PLAIN",)), False, HELP_BASE + " STARTTLS"),
        (Config(tls_available=True, auth_mechanisms=("PLAIN",)), True, HELP_BASE + " AUTH"),
        (Config(auth_mechanisms=("PLAIN",)), True, HELP_BASE + " AUTH"),
        (Config(chunking=False), False, HELP_BASE.replace(" BDAT", "")),
    ],
    ids=["full", "full-tls", "plain", "auth-before-tls", "auth-in-tls", "smtps", "no-chunking"],
)
def test_help_lists_only_what_is_offered_now(config: Config, tls: bool, listed: str) -> None:
    _, wire = receive_and_get(connect(config, tls=tls), b"HELP\r\n")
    assert help_commands(wire) == listed


def test_help_drops_starttls_after_the_handshake() -> None:
    conn = session(Config(tls_available=True, auth_mechanisms=("LOGIN",)))
    _, wire = receive_and_get(conn, b"HELP\r\nSTARTTLS\r\n")
    assert help_commands(wire.removesuffix(b"220 2.0.0 Ready to start TLS\r\n")).endswith(
        "QUIT STARTTLS"
    )
    conn.tls_started()
    _, wire = receive_and_get(conn, b"HELP\r\n")
    assert help_commands(wire) == HELP_BASE + " AUTH"


def test_help_in_lmtp_lists_lhlo() -> None:
    _, wire = receive_and_get(connect(Config(lmtp=True)), b"HELP\r\n")
    assert wire.startswith(b"214 2.0.0 Commands: LHLO MAIL ")


def test_vrfy_is_252_and_needs_an_argument() -> None:
    _, wire = receive_and_get(connect(), b"VRFY bob\r\nVRFY\r\n")
    assert wire == (
        b"252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery\r\n"
        b"501 5.5.4 Syntax: VRFY address\r\n"
    )


def test_expn_is_502() -> None:
    _, wire = receive_and_get(connect(), b"EXPN staff\r\n")
    assert wire == b"502 5.5.1 Error: command not implemented\r\n"


# ---------------------------------------------------------------- QUIT, unknown, forbidden


@pytest.mark.parametrize("feed", FEEDERS)
def test_quit_ignores_everything_after_it(feed: str) -> None:
    conn = session()
    events, wire = FEEDERS[feed](conn, b"QUIT\r\nNOOP\r\n")
    assert events == [Quit(), Closed(reason=CloseReason.QUIT)]
    assert wire == b"221 2.0.0 Bye\r\n"
    assert conn.state is State.CLOSED
    assert conn.next_event() == Closed(reason=CloseReason.QUIT)


def test_quit_sent_before_the_greeting_is_answered_after_it() -> None:
    conn = ServerConnection(FULL)
    events, wire = receive_and_get(conn, b"quit\r\n")
    assert events == [Connected(peer=None), Quit(), Closed(reason=CloseReason.QUIT)]
    assert wire == b"220 mx.example.org ESMTP smtpkit\r\n221 2.0.0 Bye\r\n"


@pytest.mark.parametrize("line", [b"XYZZY", b"MAILFROM:<a@example.org>", b"HELO\tc", b"\tNOOP"])
def test_unknown_command_is_500(line: bytes) -> None:
    conn = session()
    events, wire = receive_and_get(conn, line + b"\r\nNOOP\r\n")
    assert events == []
    assert wire == b"500 5.5.2 Error: command not recognized\r\n250 2.0.0 Ok\r\n"


def test_lhlo_outside_lmtp_is_unknown() -> None:
    _, wire = receive_and_get(connect(), b"LHLO c\r\n")
    assert wire == b"500 5.5.2 Error: command not recognized\r\n"


@pytest.mark.parametrize("line", [b"", b" ", b"   "])
def test_empty_line_is_500(line: bytes) -> None:
    conn = session()
    _, wire = receive_and_get(conn, line + b"\r\nNOOP\r\n")
    assert wire == b"500 5.5.2 Error: bad syntax\r\n250 2.0.0 Ok\r\n"


@pytest.mark.parametrize(
    "line",
    [
        b"GET / HTTP/1.1",
        b"POST /submit HTTP/1.1",
        b"CONNECT mx.example.org:25 HTTP/1.1",
        b"get /",
    ],
)
@pytest.mark.parametrize("after_ehlo", [True, False])
def test_http_commands_end_the_session(line: bytes, after_ehlo: bool) -> None:
    conn = session() if after_ehlo else connect()
    events, wire = receive_and_get(conn, line + b"\r\nHost: mx.example.org\r\n\r\n")
    assert wire == b"221 2.7.0 Error: I can break rules, too. Goodbye.\r\n"
    assert events == [Closed(reason=CloseReason.FORBIDDEN)]


def test_forbidden_commands_are_configurable() -> None:
    conn = connect(Config(forbidden_commands=frozenset({"USER"})))
    _, wire = receive_and_get(conn, b"GET /\r\nUSER root\r\n")
    assert codes(wire) == [500, 221]


@pytest.mark.parametrize(
    "line",
    [b"NOOP\x00", b"NO\x01OP", b"NOOP\x7f", b"NOOP\rRSET", b"NOOP\x1b[2J"],
)
def test_control_characters_in_a_command_are_500(line: bytes) -> None:
    _, wire = receive_and_get(session(), line + b"\r\n")
    assert wire == b"500 5.5.2 Error: bad character in command\r\n"


def test_commands_may_end_with_bare_lf() -> None:
    _, wire = receive_and_get(session(), b"NOOP\nRSET\n")
    assert codes(wire) == [250, 250]


@pytest.mark.parametrize(
    "line",
    ["qu\u0131t", "R\u017fET", "noo\u0440", "\u0131\u0307", "MA\u0130L FROM:<a@example.org>"],
    ids=["dotless i", "long s", "cyrillic", "combining", "dotted I"],
)
def test_non_ascii_verbs_never_alias_a_command(line: str) -> None:
    """str.upper() maps a dotless i to "I" and a long s to "S"; verbs match in ASCII only."""
    conn = session()
    events, wire = receive_and_get(conn, line.encode() + b"\r\n")
    assert events == []
    assert wire == b"500 5.5.2 Error: command not recognized\r\n"
    assert conn.state is State.READY


def test_non_ascii_bdat_last_and_auth_mechanism_never_alias() -> None:
    conn = session()
    receive_and_get(conn, ENVELOPE)
    _, wire = receive_and_get(conn, "BDAT 1 la\u017ft\r\n".encode())
    assert wire == b"501 5.5.4 Syntax: BDAT count [LAST]\r\n"
    _, wire = receive_and_get(conn, "RSET\r\nAUTH PLA\u0131N\r\n".encode())
    assert wire == b"250 2.0.0 Ok\r\n504 5.5.4 Error: unsupported authentication mechanism\r\n"
