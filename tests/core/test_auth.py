"""AUTH (RFC 4954): PLAIN and LOGIN, cancelling, malformed responses, limits, sequencing."""

from __future__ import annotations

import base64
import dataclasses

import pytest
from helpers import FEEDERS, FULL, codes, connect, receive_and_get, reject, send_and_get, session

from smtp_core import (
    PAUSED,
    AuthCredentials,
    Close,
    Closed,
    CloseReason,
    Config,
    MailFrom,
    Reject,
    State,
)


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


PLAIN_IR = b"AUTH PLAIN " + b64(b"\0alice\0s3cret") + b"\r\n"
ALICE = AuthCredentials(mechanism="PLAIN", username="alice", password="s3cret")
USERNAME = b"334 VXNlcm5hbWU6\r\n"
PASSWORD = b"334 UGFzc3dvcmQ6\r\n"
OK = b"235 2.7.0 Authentication successful\r\n"


@pytest.mark.parametrize("feed", FEEDERS)
@pytest.mark.parametrize(
    ("data", "creds", "wire"),
    [
        (PLAIN_IR, ALICE, OK),
        (b"auth plain " + b64(b"\0alice\0s3cret") + b"\r\n", ALICE, OK),
        (b"AUTH PLAIN\r\n" + b64(b"\0alice\0s3cret") + b"\r\n", ALICE, b"334 \r\n" + OK),
        (
            b"AUTH PLAIN " + b64(b"admin\0alice\0s3cret") + b"\r\n",
            dataclasses.replace(ALICE, authzid="admin"),
            OK,
        ),
        (
            b"AUTH PLAIN " + b64("\0jos\u00e9\0p\u00e4ss w\u00f6rd".encode()) + b"\r\n",
            AuthCredentials(
                mechanism="PLAIN", username="jos\u00e9", password="p\u00e4ss w\u00f6rd"
            ),
            OK,
        ),
        (
            b"AUTH PLAIN " + b64(b"\0alice\0") + b"\r\n",
            AuthCredentials(mechanism="PLAIN", username="alice", password=""),
            OK,
        ),
        (
            b"AUTH LOGIN\r\n" + b64(b"alice") + b"\r\n" + b64(b"s3cret") + b"\r\n",
            dataclasses.replace(ALICE, mechanism="LOGIN"),
            USERNAME + PASSWORD + OK,
        ),
        (
            b"AUTH LOGIN " + b64(b"alice") + b"\r\n" + b64(b"s3cret") + b"\r\n",
            dataclasses.replace(ALICE, mechanism="LOGIN"),
            PASSWORD + OK,
        ),
        (
            b"AUTH LOGIN\r\n" + b64(b"alice") + b"\r\n=\r\n",
            AuthCredentials(mechanism="LOGIN", username="alice", password=""),
            USERNAME + PASSWORD + OK,
        ),
    ],
    ids=[
        "plain",
        "lower",
        "plain 334",
        "authzid",
        "utf-8",
        "empty password",
        "login",
        "login ir",
        "login empty password",
    ],
)
def test_successful_exchanges(feed: str, data: bytes, creds: AuthCredentials, wire: bytes) -> None:
    conn = session()
    events, out = FEEDERS[feed](conn, data + b"NOOP\r\n")
    assert events == [creds]
    assert out == wire + b"250 2.0.0 Ok\r\n"
    assert conn.authenticated_user == creds.username
    assert conn.state is State.READY


def test_password_is_not_in_the_repr() -> None:
    assert "s3cret" not in repr(ALICE)


def test_auth_pauses_pipelined_commands_until_decided() -> None:
    conn = session()
    conn.receive_data(PLAIN_IR + b"MAIL FROM:<a@example.org>\r\n")
    assert conn.next_event() == ALICE
    assert conn.next_event() is PAUSED
    assert conn.data_to_send() == b""
    assert send_and_get(conn, Reject()) == b"535 5.7.8 Error: authentication failed\r\n"
    assert conn.authenticated_user is None
    assert isinstance(conn.next_event(), MailFrom)


@pytest.mark.parametrize(
    ("answer", "wire"),
    [
        (Reject(), b"535 5.7.8 Error: authentication failed\r\n"),
        (Reject(454, "temporary failure"), b"454 4.7.8 temporary failure\r\n"),
    ],
)
def test_rejected_credentials(answer: Reject, wire: bytes) -> None:
    conn = session()
    _, out = receive_and_get(conn, PLAIN_IR + b"NOOP\r\n", reject(AuthCredentials, answer=answer))
    assert out == wire + b"250 2.0.0 Ok\r\n"
    assert conn.authenticated_user is None
    # A new attempt is allowed.
    _, out = receive_and_get(conn, PLAIN_IR)
    assert out == OK
    assert conn.authenticated_user == "alice"


def test_failures_are_capped() -> None:
    conn = session(dataclasses.replace(FULL, max_auth_failures=3))
    events, wire = receive_and_get(conn, PLAIN_IR * 4, reject(AuthCredentials))
    assert wire == (
        b"535 5.7.8 Error: authentication failed\r\n" * 2
        + b"421 4.7.0 Error: too many failed authentication attempts\r\n"
    )
    assert events[-1] == Closed(reason=CloseReason.AUTH)


def test_close_answer() -> None:
    conn = session()
    events, wire = receive_and_get(conn, PLAIN_IR, reject(AuthCredentials, answer=Close()))
    assert wire == b"421 4.7.0 mx.example.org Error: closing connection\r\n"
    assert events[-1] == Closed(reason=CloseReason.REFUSED)


@pytest.mark.parametrize(
    ("data", "wire"),
    [
        (b"AUTH PLAIN *\r\n", b"501 5.7.0 Error: authentication cancelled\r\n"),
        (b"AUTH PLAIN\r\n*\r\n", b"334 \r\n501 5.7.0 Error: authentication cancelled\r\n"),
        (b"AUTH LOGIN\r\n*\r\n", USERNAME + b"501 5.7.0 Error: authentication cancelled\r\n"),
        (
            b"AUTH LOGIN\r\n" + b64(b"alice") + b"\r\n*\r\n",
            USERNAME + PASSWORD + b"501 5.7.0 Error: authentication cancelled\r\n",
        ),
        (b"AUTH PLAIN =\r\n", b"501 5.5.2 Error: malformed PLAIN response\r\n"),
        (b"AUTH LOGIN =\r\n", b"501 5.5.2 Error: empty LOGIN user name\r\n"),
        (b"AUTH PLAIN !!!!\r\n", b"501 5.5.2 Error: malformed authentication response\r\n"),
        (b"AUTH PLAIN AAA\r\n", b"501 5.5.2 Error: malformed authentication response\r\n"),
        (
            b"AUTH PLAIN\r\nnot base64!\r\n",
            b"334 \r\n501 5.5.2 Error: malformed authentication response\r\n",
        ),
        (
            b"AUTH LOGIN\r\n" + b64(b"alice") + b"\r\n%%%%\r\n",
            USERNAME + PASSWORD + b"501 5.5.2 Error: malformed authentication response\r\n",
        ),
        (
            b"AUTH PLAIN " + b64(b"alice\0s3cret") + b"\r\n",
            b"501 5.5.2 Error: malformed PLAIN response\r\n",
        ),
        (
            b"AUTH PLAIN " + b64(b"\0\0s3cret") + b"\r\n",
            b"501 5.5.2 Error: malformed PLAIN response\r\n",
        ),
        (
            b"AUTH PLAIN " + b64(b"\0a\0b\0c") + b"\r\n",
            b"501 5.5.2 Error: malformed PLAIN response\r\n",
        ),
        (
            b"AUTH PLAIN " + b64(b"\0al\xffice\0s3cret") + b"\r\n",
            b"501 5.5.2 Error: authentication data is not UTF-8\r\n",
        ),
        (
            b"AUTH PLAIN " + b64(b"\0al\nice\0s3cret") + b"\r\n",
            b"501 5.5.2 Error: control character in authentication data\r\n",
        ),
        (
            b"AUTH LOGIN\r\n" + b64(b"al\x7fice") + b"\r\n",
            USERNAME + b"501 5.5.2 Error: control character in authentication data\r\n",
        ),
    ],
    ids=[
        "cancel ir",
        "cancel plain",
        "cancel login user",
        "cancel login password",
        "empty plain",
        "empty login",
        "bad base64 ir",
        "bad padding ir",
        "bad base64 response",
        "bad base64 password",
        "two parts",
        "empty user",
        "four parts",
        "not utf-8",
        "newline",
        "del",
    ],
)
def test_failed_exchanges_end_with_501_and_back_in_sync(data: bytes, wire: bytes) -> None:
    conn = session()
    events, out = receive_and_get(conn, data + b"NOOP\r\n")
    assert events == []
    assert out == wire + b"250 2.0.0 Ok\r\n"
    assert conn.state is State.READY
    assert conn.authenticated_user is None


# ---------------------------------------------------------------- SASL line length

LIMIT = FULL.max_auth_line  # 12288


def plain_response(length: int) -> bytes:
    """A valid PLAIN response whose base64 text is exactly `length` octets."""
    raw = length // 4 * 3
    response = b64(b"\0alice\0" + b"p" * (raw - 7))
    assert len(response) == length
    return response


@pytest.mark.parametrize("how", ["initial", "continuation"])
def test_sasl_response_of_12288_octets_is_accepted(how: str) -> None:
    conn = session()
    response = plain_response(LIMIT)
    data = b"AUTH PLAIN " + response if how == "initial" else b"AUTH PLAIN\r\n" + response
    events, wire = receive_and_get(conn, data + b"\r\n")
    assert len(events) == 1
    assert isinstance(events[0], AuthCredentials)
    assert events[0].password == "p" * (LIMIT // 4 * 3 - 7)
    assert wire.endswith(OK)


@pytest.mark.parametrize("how", ["initial", "continuation"])
def test_longer_sasl_response_is_500_and_back_to_ready(how: str) -> None:
    conn = session()
    response = plain_response(LIMIT + 4)
    data = b"AUTH PLAIN " + response if how == "initial" else b"AUTH PLAIN\r\n" + response
    events, wire = receive_and_get(conn, data + b"\r\nNOOP\r\n")
    assert events == []
    assert codes(wire)[-2:] == [500, 250]
    assert conn.state is State.READY


def test_long_line_other_than_auth_is_still_capped_at_the_command_limit() -> None:
    conn = session()
    _, wire = receive_and_get(conn, b"NOOP " + b"x" * 3000 + b"\r\n")
    assert wire == b"500 5.5.2 Error: line too long\r\n"


# ---------------------------------------------------------------- sequencing


def test_auth_during_a_transaction_is_503() -> None:
    conn = session()
    _, wire = receive_and_get(conn, b"MAIL FROM:<a@example.org>\r\n" + PLAIN_IR)
    assert wire.endswith(b"503 5.5.1 Error: MAIL transaction in progress\r\n")


def test_auth_twice_is_503() -> None:
    conn = session()
    _, wire = receive_and_get(conn, PLAIN_IR + PLAIN_IR)
    assert wire == OK + b"503 5.5.1 Error: already authenticated\r\n"


@pytest.mark.parametrize("hello", [None, b"HELO c.example\r\n"])
def test_auth_needs_ehlo(hello: bytes | None) -> None:
    conn = connect() if hello is None else session(hello=hello)
    _, wire = receive_and_get(conn, PLAIN_IR)
    assert wire == b"503 5.5.1 Error: send EHLO first\r\n"


@pytest.mark.parametrize("line", [b"AUTH CRAM-MD5", b"AUTH XOAUTH2 dG9rZW4="])
def test_unknown_mechanism_is_504(line: bytes) -> None:
    _, wire = receive_and_get(session(), line + b"\r\n")
    assert wire == b"504 5.5.4 Error: unsupported authentication mechanism\r\n"


def test_auth_without_mechanism_is_501() -> None:
    _, wire = receive_and_get(session(), b"AUTH\r\n")
    assert wire == b"501 5.5.4 Syntax: AUTH mechanism [initial-response]\r\n"


def test_configured_mechanisms_only() -> None:
    config = dataclasses.replace(FULL, auth_mechanisms=("LOGIN",))
    _, wire = receive_and_get(session(config), PLAIN_IR)
    assert wire == b"504 5.5.4 Error: unsupported authentication mechanism\r\n"


def test_auth_without_tls_when_plaintext_is_not_allowed_is_538() -> None:
    config = Config(auth_mechanisms=("PLAIN",), tls_available=True)
    _, wire = receive_and_get(session(config), PLAIN_IR)
    assert wire == b"538 5.7.11 Error: must issue a STARTTLS command first\r\n"


def test_auth_not_configured_is_502() -> None:
    _, wire = receive_and_get(session(Config()), PLAIN_IR)
    assert wire == b"502 5.5.1 Error: authentication not enabled\r\n"


def test_auth_over_implicit_tls() -> None:
    config = Config(auth_mechanisms=("PLAIN",), tls_available=True)
    conn = session(config, tls=True)
    events, wire = receive_and_get(conn, PLAIN_IR)
    assert events == [ALICE]
    assert wire == OK


def test_eof_during_exchange() -> None:
    conn = session()
    receive_and_get(conn, b"AUTH LOGIN\r\n")
    assert receive_and_get(conn, b"") == ([Closed(reason=CloseReason.EOF)], b"")
    assert conn.next_event() == Closed(reason=CloseReason.EOF)
