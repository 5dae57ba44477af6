"""Trace fields: a client's EHLO name and addresses can never forge a clause, a comment or a
header in the `Received:` header, nor a field in a log line."""

from __future__ import annotations

import email
import email.policy
import logging
import re
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import Peer

from smtp_core import Config
from smtpkit.handlers import Accept, Handler, Message
from smtpkit.handlers._trace import format_received, log_escape
from smtpkit.transports import running_server

pytestmark = pytest.mark.timeout(60)

#: The issue's forgery: an EHLO name that closes the comment and adds a `by` clause.
FORGED_EHLO = "evil ([10.0.0.1])\tby mx.trusted.example (Postfix) with ESMTPS id ABC;"
DATE = "Tue, 01 Dec 2026 10:00:00 +0000"

#: What a client value may become in the header: one token, with none of the characters that
#: delimit clauses, comments, addresses or the date.
TOKEN = r'[^\s()<>;"\\]+'
RECEIVED = re.compile(
    rf"Received: from (?P<helo>{TOKEN}) \(\[(?P<ip>[0-9a-fA-F.:IPv]+)\]\)\r\n"
    r"\tby mx\.example\.org \(smtpkit\) with (?P<proto>E?SMTPS?A?) id 4F2A1B3C4D5E"
    r"(?:\r\n\t\(using TLSv1\.3\))?"
    rf"(?:\r\n\tfor <(?P<rcpt>{TOKEN})>)?"
    rf"; {re.escape(DATE)}\r\n\Z"
)

# A few hand-picked hostile values, then anything at all.
HOSTILE = st.sampled_from(
    [
        FORGED_EHLO,
        "x\r\nX-Injected: yes",
        "x\nReceived: from forged",
        "a) by b; c (d",
        'q"\\"',
        "\u2028\u2029\x85\x0b\x0c",
        "\u202eelpmaxe.live",
        "\udcff\udc80",
        " ",
        "",
    ]
)
ANY_TEXT = st.one_of(HOSTILE, st.text(max_size=600))
DOMAINS = st.from_regex(
    r"\A[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?){0,4}\Z"
)
LITERALS = st.ip_addresses().map(lambda ip: f"[IPv6:{ip}]" if ip.version == 6 else f"[{ip}]")


def received(helo: str | None, recipient: str | None, *, utf8: bool, tls: bool = False) -> bytes:
    return format_received(
        helo=helo,
        client_ip="192.0.2.7",
        hostname="mx.example.org",
        protocol="ESMTP",
        queue_id="4F2A1B3C4D5E",
        tls_version="TLSv1.3" if tls else None,
        recipient=recipient,
        utf8=utf8,
        date=DATE,
    )


@settings(deadline=None, max_examples=500)
@given(ANY_TEXT, st.one_of(st.none(), ANY_TEXT), st.booleans(), st.booleans())
def test_the_header_keeps_its_structure_whatever_the_client_sends(
    helo: str, recipient: str | None, utf8: bool, tls: bool
) -> None:
    header = received(helo, recipient, utf8=utf8, tls=tls)
    text = header.decode("utf-8")  # never a lone surrogate or an invalid byte
    assert utf8 or text.isascii()
    match = RECEIVED.match(text)
    assert match is not None, text
    assert "@" not in match["helo"]
    assert (match["rcpt"] is None) == (not recipient)
    # Exactly one header, every line well under RFC 5322's 998 octets.
    lines = header.split(b"\r\n")
    assert lines[-1] == b"" and all(b"\r" not in x and b"\n" not in x for x in lines)
    assert all(line.startswith(b"\t") for line in lines[1:-1])
    assert max(map(len, lines)) < 998
    parsed = email.message_from_bytes(header + b"\r\nbody", policy=email.policy.compat32)
    assert [name for name, _ in parsed.items()] == ["Received"]
    assert parsed.defects == []


@settings(deadline=None, max_examples=200)
@given(st.one_of(DOMAINS, LITERALS), st.from_regex(r"\A[a-z0-9._+-]{1,20}@[a-z0-9.-]{1,30}\Z"))
def test_valid_names_and_plain_addresses_are_written_unchanged(helo: str, recipient: str) -> None:
    match = RECEIVED.match(received(helo, recipient, utf8=False).decode())
    assert match is not None
    assert (match["helo"], match["rcpt"]) == (helo, recipient)


def test_the_forged_ehlo_of_the_issue_is_neutered() -> None:
    text = received(FORGED_EHLO, None, utf8=False).decode()
    assert text.startswith(
        "Received: from evil??[10.0.0.1]??by?mx.trusted.example??Postfix??with?ESMTPS?id?ABC?"
        " ([192.0.2.7])\r\n\tby mx.example.org (smtpkit)"
    )
    assert text.count(" by ") == 0 and text.count("\tby ") == 1


def test_non_ascii_is_kept_only_in_an_smtputf8_message() -> None:
    assert b"for <\xe7\x94\xa8@\xe4\xbe\x8b.example>" in received(
        "x", "\u7528@\u4f8b.example", utf8=True
    )
    assert b"for <?@?.example>" in received("x", "\u7528@\u4f8b.example", utf8=False)


# ---------------------------------------------------------------------- log lines

_UNESCAPE = re.compile(r"\\(x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8}|\\)")


def unescape(value: str) -> str:
    return _UNESCAPE.sub(lambda m: "\\" if m[1] == "\\" else chr(int(m[1][1:], 16)), value)


def parse_fields(line: str) -> dict[str, str]:
    """`key=value` fields separated by single spaces, as a log reader splits them."""
    fields = {}
    for part in line.split(" "):
        key, sep, value = part.partition("=")
        assert sep and key not in fields, (part, line)
        fields[key] = unescape(value)
    return fields


KEYS = st.text(string.ascii_lowercase, min_size=1, max_size=8)


@settings(deadline=None, max_examples=500)
@given(st.dictionaries(KEYS, ANY_TEXT, min_size=1, max_size=6))
def test_a_log_line_parses_back_into_the_same_fields(fields: dict[str, str]) -> None:
    line = " ".join(f"{key}={log_escape(value)}" for key, value in fields.items())
    assert "\r" not in line and "\n" not in line
    assert all(c == " " or c.isprintable() for c in line)
    assert line.count("=") == len(fields)  # no value can add a key=value pair
    assert parse_fields(line) == fields


@pytest.mark.parametrize(
    "value", ["a@example.org", "", "用户@例子.广告", "<>", "[127.0.0.1]:25", "a+b-c.d_e@x"]
)
def test_ordinary_values_read_as_they_are(value: str) -> None:
    assert log_escape(value) == value


class Keep(Handler):
    blocking = False
    messages: list[bytes] = []

    def data(self, message: Message) -> Accept:
        self.messages.append(bytes(message))
        return Accept()


@pytest.mark.parametrize(
    "sender",
    [
        '"x decision=accepted peer=[6.6.6.6]:1"@example.org',
        '"a\\"b c\\\\"@example.org',
        "\u7528\u6237@\u4f8b\u5b50.\u5e7f\u544a",
    ],
)
def test_the_message_log_line_and_header_of_a_hostile_client(
    sender: str, caplog: pytest.LogCaptureFixture
) -> None:
    messages: list[bytes] = []
    handler = type("Keeper", (Keep,), {"messages": messages})
    utf8 = not sender.isascii()
    config = Config(smtputf8=True)
    with (
        caplog.at_level(logging.INFO, "smtpkit"),
        running_server(handler, config=config) as server,
        Peer((server.host, server.port)) as peer,
    ):
        peer.hello(FORGED_EHLO.encode())
        mail = f"MAIL FROM:<{sender}>{' SMTPUTF8' if utf8 else ''}"
        assert peer.command(mail.encode()).startswith(b"250")
        recipient = '"x> (by y); z"@example.org'
        assert peer.command(f"RCPT TO:<{recipient}>".encode()).startswith(b"250")
        assert peer.command(b"DATA").startswith(b"354")
        peer.send(b"Subject: hi\r\n\r\nhi\r\n.\r\n")
        assert peer.reply().startswith(b"250")
        local = peer.sock.getsockname()
    [message] = messages
    header = message[: message.index(b"\r\n", message.index(b"\tfor <")) + 2]
    assert header.startswith(b"Received: from evil??[10.0.0.1]??by?mx.trusted.example??")
    assert b"\tfor <?x???by?y???z?@example.org>; " in header
    parsed = email.message_from_bytes(message, policy=email.policy.compat32)
    assert parsed.get_all("Received") is not None and len(parsed.get_all("Received")) == 1
    [line] = [r.getMessage() for r in caplog.records if "nrcpt=" in r.getMessage()]
    _queue_id, fields = line.split(": ", 1)
    assert parse_fields(fields) == {
        "from": f"<{sender}>",
        "nrcpt": "1",
        "size": str(len(message) - len(header)),
        "peer": f"[{local[0]}]:{local[1]}",
        "decision": "accepted",
    }
