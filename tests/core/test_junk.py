"""Junk commands and stress mode (Postfix's smtpd_junk_command_limit and its stress values).

NOOP, RSET, VRFY and HELP move no mail: past `junk_command_limit` of them each one counts as an
error toward `max_errors`, so a client that only idles is closed with 421. `conn.stress = True`
makes both limits 1 until it is switched off again.
"""

from __future__ import annotations

import dataclasses

import pytest
from helpers import ENVELOPE, FEEDERS, FULL, codes, receive_and_get, reject, session

from smtp_core import Closed, CloseReason, Config, EndOfMessage, Quit, ServerConnection, State

SMALL = dataclasses.replace(FULL, junk_command_limit=3, max_errors=2)
TOO_MANY = b"421 4.7.0 mx.example.org Error: too many errors\r\n"
JUNK = [b"NOOP", b"RSET", b"VRFY bob", b"HELP"]


def test_the_default_limit_is_postfix_s() -> None:
    assert Config().junk_command_limit == 100


@pytest.mark.parametrize("value", [0, -1])
def test_the_limit_must_be_positive(value: int) -> None:
    with pytest.raises(ValueError, match="junk_command_limit"):
        Config(junk_command_limit=value)


@pytest.mark.parametrize("feed", FEEDERS)
@pytest.mark.parametrize("junk", JUNK, ids=lambda j: j.split()[0].decode())
def test_junk_past_the_limit_counts_as_errors_then_421(feed: str, junk: bytes) -> None:
    conn = session(SMALL)
    events, wire = FEEDERS[feed](conn, (junk + b"\r\n") * 7)
    # Three free, then two that each count an error: the second error reaches max_errors.
    assert len(codes(wire)) == 6
    assert len(set(codes(wire)[:5])) == 1 and codes(wire)[0] < 300
    assert wire.endswith(TOO_MANY)
    assert events[-1] == Closed(reason=CloseReason.ERRORS)
    assert conn.state is State.CLOSED


@pytest.mark.parametrize("feed", FEEDERS)
def test_every_junk_command_counts_toward_one_limit(feed: str) -> None:
    conn = session(SMALL)
    _, wire = FEEDERS[feed](conn, b"NOOP\r\nRSET\r\nVRFY x\r\nHELP\r\nNOOP\r\nRSET\r\n")
    assert codes(wire) == [250, 250, 252, 214, 250, 421]


@pytest.mark.parametrize("feed", FEEDERS)
def test_commands_that_move_mail_are_not_junk(feed: str) -> None:
    conn = session(SMALL)
    data = b"EHLO c.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\n" * 10
    _, wire = FEEDERS[feed](conn, data)
    assert 421 not in codes(wire)
    assert conn.state is State.RCPT


@pytest.mark.parametrize("feed", FEEDERS)
def test_errors_and_junk_add_up(feed: str) -> None:
    """A junk command past the limit and a syntax error are two errors: with max_errors=2,
    that is the end."""
    conn = session(SMALL)
    _, wire = FEEDERS[feed](conn, b"NOOP\r\n" * 4 + b"XYZZY\r\nNOOP\r\n")
    assert codes(wire) == [250, 250, 250, 250, 500, 421]


@pytest.mark.parametrize("feed", FEEDERS)
def test_a_delivered_message_forgives_junk_and_errors(feed: str) -> None:
    """As in Postfix: after a message is accepted the counts start again, so a client that
    sends RSET between many messages is never cut off."""
    conn = session(SMALL)
    message = ENVELOPE + b"DATA\r\nhi\r\n.\r\n"
    # Four junk commands per message: one past the limit in each round, twenty in all.
    _, wire = FEEDERS[feed](conn, (b"RSET\r\n" + b"NOOP\r\n" * 3 + message) * 5)
    assert 421 not in codes(wire)
    assert codes(wire).count(354) == 5


def test_a_rejected_message_forgives_nothing() -> None:
    conn = session(SMALL)
    message = ENVELOPE + b"DATA\r\nhi\r\n.\r\n"
    data = b"NOOP\r\n" * 4 + message + b"NOOP\r\n"
    _, wire = receive_and_get(conn, data, reject(EndOfMessage))
    assert wire.endswith(b"554 5.7.1 Error: message rejected\r\n250 2.0.0 Ok\r\n" + TOO_MANY)


def test_quit_is_not_junk() -> None:
    conn = session(dataclasses.replace(SMALL, junk_command_limit=1, max_errors=1))
    events, wire = receive_and_get(conn, b"NOOP\r\nQUIT\r\n")
    assert codes(wire) == [250, 221]
    assert events == [Quit(), Closed(reason=CloseReason.QUIT)]


# ---------------------------------------------------------------- stress


@pytest.mark.parametrize("feed", FEEDERS)
def test_stress_makes_both_limits_one(feed: str) -> None:
    conn = session()
    conn.stress = True
    assert conn.stress
    events, wire = FEEDERS[feed](conn, b"NOOP\r\nNOOP\r\nNOOP\r\n")
    # The first junk command is free; the second counts an error, and one error is the limit.
    assert wire == b"250 2.0.0 Ok\r\n250 2.0.0 Ok\r\n" + TOO_MANY
    assert events == [Closed(reason=CloseReason.ERRORS)]


@pytest.mark.parametrize("feed", FEEDERS)
def test_under_stress_one_error_closes(feed: str) -> None:
    conn = session()
    conn.stress = True
    _, wire = FEEDERS[feed](conn, b"XYZZY\r\nNOOP\r\n")
    assert wire == b"500 5.5.2 Error: command not recognized\r\n" + TOO_MANY


@pytest.mark.parametrize("feed", FEEDERS)
def test_stress_switched_on_after_errors_closes_at_the_next_command(feed: str) -> None:
    """Postfix checks the error count before each command: errors made before the stress
    began already pass the new limit."""
    conn = session()
    _, wire = receive_and_get(conn, b"XYZZY\r\n")
    assert codes(wire) == [500]
    conn.stress = True
    events, wire = FEEDERS[feed](conn, b"MAIL FROM:<a@example.org>\r\n")
    assert wire == TOO_MANY
    assert events == [Closed(reason=CloseReason.ERRORS)]


@pytest.mark.parametrize("feed", FEEDERS)
def test_switching_stress_off_restores_the_config_limits(feed: str) -> None:
    conn = session(SMALL)
    conn.stress = True
    _, wire = receive_and_get(conn, b"NOOP\r\n")
    assert codes(wire) == [250]
    conn.stress = False
    assert not conn.stress
    # Junk so far: 1 of 3; errors: 0 of 2. Two more free, then two errors, then 421.
    _, wire = FEEDERS[feed](conn, b"NOOP\r\n" * 6)
    assert codes(wire) == [250, 250, 250, 250, 421]


def test_stress_survives_starttls() -> None:
    """The limits belong to the connection, not to the session that STARTTLS resets."""
    conn = session()
    conn.stress = True
    receive_and_get(conn, b"NOOP\r\nSTARTTLS\r\n")
    conn.tls_started()
    _, wire = receive_and_get(conn, b"NOOP\r\n")
    assert wire == b"250 2.0.0 Ok\r\n" + TOO_MANY


def test_stress_is_off_by_default() -> None:
    assert not ServerConnection().stress
