"""ESMTP parameters of MAIL and RCPT: SIZE, BODY, SMTPUTF8, DSN, AUTH, and the syntax rules."""

from __future__ import annotations

import dataclasses

import pytest
from helpers import FULL, receive_and_get, session

from smtp_core import (
    Config,
    EndOfMessage,
    MailFrom,
    MailParams,
    MessageData,
    RcptParams,
    RcptTo,
    State,
)

SMALL = dataclasses.replace(FULL, max_message_size=1000)


def mail(line: bytes, config: Config = FULL, hello: bytes = b"EHLO c\r\n") -> tuple[list, bytes]:
    return receive_and_get(session(config, hello), b"MAIL FROM:" + line + b"\r\n")


def rcpt(line: bytes, config: Config = FULL, sender: bytes = b"<a@example.org>") -> tuple:
    conn = session(config)
    receive_and_get(conn, b"MAIL FROM:" + sender + b"\r\n")
    return receive_and_get(conn, b"RCPT TO:" + line + b"\r\n")


# ---------------------------------------------------------------- SIZE


@pytest.mark.parametrize(("value", "size"), [(b"0", 0), (b"999", 999), (b"1000", 1000)])
def test_size_within_limit(value: bytes, size: int) -> None:
    events, wire = mail(b"<a@example.org> SIZE=" + value, SMALL)
    assert events == [MailFrom(sender="a@example.org", params=MailParams(size=size))]
    assert wire == b"250 2.1.0 Ok\r\n"


@pytest.mark.parametrize(
    "value", [b"1001", b"99999999999999999999", b"00000000000000001001"], ids=["1001", "20x9", "0s"]
)
def test_size_over_limit_is_552(value: bytes) -> None:
    events, wire = mail(b"<a@example.org> SIZE=" + value, SMALL)
    assert events == []
    assert wire == b"552 5.3.4 Error: message size exceeds fixed limit\r\n"


@pytest.mark.parametrize(
    "value",
    [str(10**30).encode(), b"9" * 1000, b"9" * 2000, b"-1", b"1e9", b"0x10", b"12abc", b"+5"],
    ids=["10**30", "1000 digits", "2000 digits", "negative", "exponent", "hex", "junk", "plus"],
)
def test_size_malformed_or_huge_is_501_without_crashing(value: bytes) -> None:
    conn = session(SMALL)
    events, wire = receive_and_get(conn, b"MAIL FROM:<a@example.org> SIZE=" + value + b"\r\n")
    assert events == []
    assert wire in (b"501 5.5.4 Error: bad SIZE value\r\n", b"500 5.5.2 Error: line too long\r\n")
    assert conn.state is State.READY


def test_size_without_the_extension_is_555() -> None:
    _, wire = mail(b"<a@example.org> SIZE=10", dataclasses.replace(FULL, size=False))
    assert wire == b"555 5.5.4 Error: unsupported parameter SIZE\r\n"


# ---------------------------------------------------------------- BODY


@pytest.mark.parametrize(
    ("value", "body"), [(b"7BIT", "7BIT"), (b"8BITMIME", "8BITMIME"), (b"8bitmime", "8BITMIME")]
)
def test_body_values(value: bytes, body: str) -> None:
    events, wire = mail(b"<a@example.org> BODY=" + value)
    assert events == [MailFrom(sender="a@example.org", params=MailParams(body=body))]
    assert wire == b"250 2.1.0 Ok\r\n"


@pytest.mark.parametrize("value", [b"BINARYMIME", b"8BIT", b"x"])
def test_other_body_values_are_501(value: bytes) -> None:
    _, wire = mail(b"<a@example.org> BODY=" + value)
    assert wire == b"501 5.5.4 Error: BODY is 7BIT or 8BITMIME\r\n"


def test_body_without_8bitmime_is_555() -> None:
    _, wire = mail(b"<a@example.org> BODY=8BITMIME", dataclasses.replace(FULL, eightbitmime=False))
    assert wire == b"555 5.5.4 Error: unsupported parameter BODY\r\n"


# ---------------------------------------------------------------- SMTPUTF8

UTF8_SENDER = "δοκιμή@παράδειγμα.δοκιμή"
UTF8_RCPT = "用户@例子.广告"


def test_utf8_sender_with_smtputf8() -> None:
    events, wire = mail(f"<{UTF8_SENDER}> SMTPUTF8 BODY=8BITMIME".encode())
    params = MailParams(smtputf8=True, body="8BITMIME")
    assert events == [MailFrom(sender=UTF8_SENDER, params=params)]
    assert wire == b"250 2.1.0 Ok\r\n"


@pytest.mark.parametrize(
    ("config", "hello", "line"),
    [
        (FULL, b"EHLO c\r\n", f"<{UTF8_SENDER}>"),
        (FULL, b"HELO c\r\n", f"<{UTF8_SENDER}>"),
        (dataclasses.replace(FULL, smtputf8=False), b"EHLO c\r\n", f"<{UTF8_SENDER}> SMTPUTF8"),
        (FULL, b"EHLO c\r\n", f"<{UTF8_SENDER}> BODY=8BITMIME"),
    ],
    ids=["no param", "after HELO", "extension off", "other params"],
)
def test_utf8_sender_without_smtputf8_is_553(config: Config, hello: bytes, line: str) -> None:
    events, wire = mail(line.encode(), config, hello)
    assert events == []
    assert wire == b"553 5.6.7 Error: non-ASCII address needs SMTPUTF8\r\n"


def test_smtputf8_param_with_ascii_sender_is_fine() -> None:
    events, _ = mail(b"<a@example.org> SMTPUTF8")
    assert events == [MailFrom(sender="a@example.org", params=MailParams(smtputf8=True))]


def test_smtputf8_param_when_off_is_555() -> None:
    _, wire = mail(b"<a@example.org> SMTPUTF8", dataclasses.replace(FULL, smtputf8=False))
    assert wire == b"555 5.5.4 Error: unsupported parameter SMTPUTF8\r\n"


def test_utf8_recipient_needs_smtputf8_transaction() -> None:
    events, wire = rcpt(f"<{UTF8_RCPT}>".encode(), sender=b"<a@example.org> SMTPUTF8")
    assert events == [RcptTo(recipient=UTF8_RCPT, params=RcptParams())]
    events, wire = rcpt(f"<{UTF8_RCPT}>".encode())
    assert events == []
    assert wire == b"553 5.6.7 Error: non-ASCII address needs SMTPUTF8\r\n"


@pytest.mark.parametrize(
    "address",
    ["a@exa\u0085mple.org", "\u00e9@example.org", "a@\ud7ff.example"],
    ids=["C1 control", "latin", "hangul"],
)
def test_non_ascii_sender_without_smtputf8_never_passes(address: str) -> None:
    _, wire = mail(f"<{address}>".encode())
    assert wire[:3] in (b"501", b"553")


# ---------------------------------------------------------------- DSN


def test_dsn_parameters_are_decoded_and_handed_over() -> None:
    conn = session()
    data = (
        b"MAIL FROM:<a@example.org> RET=hdrs ENVID=QQ314159+2Bx+3Dy\r\n"
        b"RCPT TO:<b@example.org> NOTIFY=success,Failure ORCPT=rfc822;b+2Bsuffix@example.org\r\n"
        b"RCPT TO:<c@example.org> NOTIFY=NEVER\r\n"
        b"DATA\r\nhi\r\n.\r\n"
    )
    events, wire = receive_and_get(conn, data)
    params = MailParams(ret="HDRS", envid="QQ314159+x=y")
    first = RcptParams(notify=("SUCCESS", "FAILURE"), orcpt=("rfc822", "b+suffix@example.org"))
    second = RcptParams(notify=("NEVER",))
    assert events == [
        MailFrom(sender="a@example.org", params=params),
        RcptTo(recipient="b@example.org", params=first),
        RcptTo(recipient="c@example.org", params=second),
        MessageData(data=b"hi\r\n"),
        EndOfMessage(
            size=4,
            sender="a@example.org",
            recipients=("b@example.org", "c@example.org"),
            params=params,
            rcpt_params=(first, second),
        ),
    ]
    assert wire.endswith(b"354 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 Ok\r\n")


@pytest.mark.parametrize(
    ("line", "wire"),
    [
        (b"RET=NONE", b"501 5.5.4 Error: RET is FULL or HDRS\r\n"),
        (b"ENVID=a+0Db", b"501 5.5.4 Error: control character in ENVID\r\n"),
        (b"ENVID=a+00b", b"501 5.5.4 Error: control character in ENVID\r\n"),
        (b"ENVID=a+7Fb", b"501 5.5.4 Error: control character in ENVID\r\n"),
        (b"ENVID=a+85b", b"501 5.5.4 Error: non-ASCII character in ENVID\r\n"),
        (b"ENVID=a+C3+A9", b"501 5.5.4 Error: non-ASCII character in ENVID\r\n"),
        (b"ENVID=a+zz", b"501 5.5.4 Error: bad xtext in ENVID\r\n"),
        (b"ENVID=a+2b", b"501 5.5.4 Error: bad xtext in ENVID\r\n"),
        (b"ENVID=a+", b"501 5.5.4 Error: bad xtext in ENVID\r\n"),
        (b"ENVID=" + b"x" * 101, b"501 5.5.4 Error: ENVID too long\r\n"),
    ],
)
def test_bad_mail_dsn_parameters_are_501(line: bytes, wire: bytes) -> None:
    assert mail(b"<a@example.org> " + line) == ([], wire)


def test_envid_of_100_characters_is_fine() -> None:
    events, _ = mail(b"<a@example.org> ENVID=" + b"x" * 100)
    assert events == [MailFrom(sender="a@example.org", params=MailParams(envid="x" * 100))]


@pytest.mark.parametrize(
    ("line", "wire"),
    [
        (b"NOTIFY=NEVER,SUCCESS", b"501 5.5.4 Error: bad NOTIFY value\r\n"),
        (b"NOTIFY=SOMETIMES", b"501 5.5.4 Error: bad NOTIFY value\r\n"),
        (b"NOTIFY=SUCCESS,", b"501 5.5.4 Error: bad NOTIFY value\r\n"),
        (b"ORCPT=rfc822", b"501 5.5.4 Error: ORCPT is type;address\r\n"),
        (b"ORCPT=;b@example.org", b"501 5.5.4 Error: ORCPT is type;address\r\n"),
        (b"ORCPT=rfc822;", b"501 5.5.4 Error: ORCPT is type;address\r\n"),
        (b"ORCPT=rfc822;b+0A@example.org", b"501 5.5.4 Error: control character in ORCPT\r\n"),
    ],
)
def test_bad_rcpt_dsn_parameters_are_501(line: bytes, wire: bytes) -> None:
    events, out = rcpt(b"<b@example.org> " + line)
    assert (events, out) == ([], wire)


@pytest.mark.parametrize(
    ("command", "line", "key"),
    [
        (b"MAIL FROM:<a@example.org>", b"RET=FULL", b"RET"),
        (b"MAIL FROM:<a@example.org>", b"ENVID=x", b"ENVID"),
        (b"RCPT TO:<b@example.org>", b"NOTIFY=NEVER", b"NOTIFY"),
        (b"RCPT TO:<b@example.org>", b"ORCPT=rfc822;b@example.org", b"ORCPT"),
    ],
)
def test_dsn_parameters_without_dsn_are_555(command: bytes, line: bytes, key: bytes) -> None:
    conn = session(dataclasses.replace(FULL, dsn=False))
    if command.startswith(b"RCPT"):
        receive_and_get(conn, b"MAIL FROM:<a@example.org>\r\n")
    _, wire = receive_and_get(conn, command + b" " + line + b"\r\n")
    assert wire == b"555 5.5.4 Error: unsupported parameter " + key + b"\r\n"


# ---------------------------------------------------------------- AUTH=


@pytest.mark.parametrize(
    ("value", "auth"), [(b"<>", "<>"), (b"user+2Bx@example.org", "user+x@example.org")]
)
def test_auth_parameter_on_mail(value: bytes, auth: str) -> None:
    events, _ = mail(b"<a@example.org> AUTH=" + value)
    assert events == [MailFrom(sender="a@example.org", params=MailParams(auth=auth))]


def test_auth_parameter_bad_xtext_is_501() -> None:
    _, wire = mail(b"<a@example.org> AUTH=a+0Ab")
    assert wire == b"501 5.5.4 Error: control character in AUTH\r\n"


def test_auth_parameter_when_auth_is_not_offered_is_555() -> None:
    _, wire = mail(b"<a@example.org> AUTH=<>", Config())
    assert wire == b"555 5.5.4 Error: unsupported parameter AUTH\r\n"


# ---------------------------------------------------------------- generic syntax


@pytest.mark.parametrize(
    ("line", "wire"),
    [
        (b"XFOO=bar", b"555 5.5.4 Error: unsupported parameter XFOO\r\n"),
        (b"xfoo", b"555 5.5.4 Error: unsupported parameter XFOO\r\n"),
        (b"SIZE=10 size=20", b"501 5.5.4 Error: duplicate parameter SIZE\r\n"),
        (b"BODY=7BIT BODY=7BIT", b"501 5.5.4 Error: duplicate parameter BODY\r\n"),
        (b"SMTPUTF8 SMTPUTF8", b"501 5.5.4 Error: duplicate parameter SMTPUTF8\r\n"),
        (b"SIZE=", b"501 5.5.4 Error: bad parameter syntax\r\n"),
        (b"=10", b"501 5.5.4 Error: bad parameter syntax\r\n"),
        (b"-SIZE=10", b"501 5.5.4 Error: bad parameter syntax\r\n"),
        (b"SI_ZE=10", b"501 5.5.4 Error: bad parameter syntax\r\n"),
        ("ENVID=é".encode(), b"501 5.5.4 Error: bad value for ENVID\r\n"),
    ],
)
def test_parameter_syntax(line: bytes, wire: bytes) -> None:
    assert mail(b"<a@example.org> " + line) == ([], wire)


def test_parameters_are_separated_by_spaces_only_after_the_path() -> None:
    events, _ = mail(b"<a@example.org>   SIZE=10    BODY=7BIT  ")
    assert events == [MailFrom(sender="a@example.org", params=MailParams(size=10, body="7BIT"))]


def test_unbracketed_path_with_parameters() -> None:
    events, _ = mail(b"a@example.org SIZE=10")
    assert events == [MailFrom(sender="a@example.org", params=MailParams(size=10))]


@pytest.mark.parametrize(
    ("command", "setup"),
    [
        (b"MAIL FROM:<a@example.org> SIZE=10", b""),
        (b"MAIL FROM:<a@example.org> SMTPUTF8", b""),
        (b"RCPT TO:<b@example.org> NOTIFY=NEVER", b"MAIL FROM:<a@example.org>\r\n"),
    ],
)
def test_parameters_after_helo_are_555(command: bytes, setup: bytes) -> None:
    conn = session(hello=b"HELO c\r\n")
    _, wire = receive_and_get(conn, setup + command + b"\r\n")
    assert wire.endswith(b"555 5.5.4 Error: parameters need EHLO\r\n")
