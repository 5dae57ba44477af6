"""Every (state, command) pair: the reply each command gets in each state.

States where lines are commands are reached with raw bytes; the others (DATA, AUTH, STARTTLS,
CLOSED, CONNECT) are checked separately below: there a command line is not a command.
"""

from __future__ import annotations

import base64

import pytest
from helpers import FULL, codes, receive_and_get

from smtp_core import (
    PAUSED,
    Accept,
    Closed,
    CloseReason,
    LocalProtocolError,
    MessageData,
    Reject,
    ServerConnection,
    State,
)
from smtp_core._state import COMMAND_NAMES, FACTS, UNKNOWN

PLAIN = b"AUTH PLAIN " + base64.b64encode(b"\0user\0secret")

#: How to reach each command state from a fresh connection (all decisions accepted).
SETUP: dict[State, tuple[bytes, bool]] = {
    # state: (bytes after the greeting, whether the greeting is accepted)
    State.REFUSED: (b"", False),
    State.GREETED: (b"", True),
    State.READY: (b"EHLO c.example\r\n", True),
    State.MAIL: (b"EHLO c.example\r\nMAIL FROM:<a@example.org>\r\n", True),
    State.RCPT: (
        b"EHLO c.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\n",
        True,
    ),
    State.CHUNKING: (
        b"EHLO c.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nBDAT 3\r\nabc",
        True,
    ),
}

COMMANDS: dict[str, bytes] = {
    "HELO": b"HELO c.example\r\n",
    "EHLO": b"EHLO c.example\r\n",
    "LHLO": b"LHLO c.example\r\n",
    "MAIL": b"MAIL FROM:<x@example.org>\r\n",
    "RCPT": b"RCPT TO:<y@example.org>\r\n",
    "DATA": b"DATA\r\n",
    "BDAT": b"BDAT 1 LAST\r\nx",
    "RSET": b"RSET\r\n",
    "NOOP": b"NOOP\r\n",
    "HELP": b"HELP\r\n",
    "VRFY": b"VRFY bob\r\n",
    "EXPN": b"EXPN staff\r\n",
    "STARTTLS": b"STARTTLS\r\n",
    "AUTH": PLAIN + b"\r\n",
    "QUIT": b"QUIT\r\n",
    # FULL trusts nobody with XCLIENT: 500 (the rest is in tests/core/test_xclient.py).
    "XCLIENT": b"XCLIENT ADDR=192.0.2.1\r\n",
    "unknown": b"XYZZY\r\n",
}

#: The first reply code of each command in each state; 503 marks "out of sequence".
TABLE = """
command   REFUSED GREETED READY MAIL RCPT CHUNKING
HELO      503     250     250   250  250  250
EHLO      503     250     250   250  250  250
LHLO      503     500     500   500  500  500
MAIL      503     503     250   503  503  503
RCPT      503     503     503   250  250  503
DATA      503     503     503   503  354  503
BDAT      503     503     503   503  250  250
RSET      503     250     250   250  250  250
NOOP      503     250     250   250  250  250
HELP      503     214     214   214  214  214
VRFY      503     252     252   252  252  252
EXPN      503     502     502   502  502  502
STARTTLS  503     220     220   503  503  503
AUTH      503     503     235   503  503  503
QUIT      221     221     221   221  221  221
XCLIENT   503     500     500   503  503  503
unknown   503     500     500   500  500  500
"""


def _parse_table(table: str) -> dict[str, dict[State, int]]:
    header, *rows = table.strip().splitlines()
    states = [State[name] for name in header.split()[1:]]
    return {
        command: dict(zip(states, map(int, row_codes), strict=True))
        for command, *row_codes in (row.split() for row in rows)
    }


EXPECTED = _parse_table(TABLE)
assert set(EXPECTED) == set(COMMANDS)
assert all(set(row) == set(SETUP) for row in EXPECTED.values())

#: The state after the command, where it is not simply the state before.
AFTER: dict[tuple[str, State], State] = {
    ("HELO", State.GREETED): State.READY,
    ("EHLO", State.GREETED): State.READY,
    ("HELO", State.MAIL): State.READY,
    ("EHLO", State.MAIL): State.READY,
    ("HELO", State.RCPT): State.READY,
    ("EHLO", State.RCPT): State.READY,
    ("HELO", State.CHUNKING): State.READY,
    ("EHLO", State.CHUNKING): State.READY,
    ("MAIL", State.READY): State.MAIL,
    ("RCPT", State.MAIL): State.RCPT,
    ("DATA", State.RCPT): State.DATA,
    ("BDAT", State.RCPT): State.READY,
    ("BDAT", State.CHUNKING): State.READY,
    ("RSET", State.MAIL): State.READY,
    ("RSET", State.RCPT): State.READY,
    ("RSET", State.CHUNKING): State.READY,
    ("STARTTLS", State.GREETED): State.STARTTLS,
    ("STARTTLS", State.READY): State.STARTTLS,
}


def reach(state: State) -> ServerConnection:
    setup, greet = SETUP[state]
    conn = ServerConnection(FULL)
    conn.next_event()
    conn.send(Accept() if greet else Reject())
    conn.data_to_send()
    if setup:
        receive_and_get(conn, setup)
    assert conn.state is state
    return conn


CASES = [(command, state) for command in COMMANDS for state in SETUP]


@pytest.mark.parametrize(("command", "state"), CASES, ids=[f"{c}-{s.name}" for c, s in CASES])
def test_command_in_state(command: str, state: State) -> None:
    conn = reach(state)
    _, wire = receive_and_get(conn, COMMANDS[command])
    assert codes(wire)[0] == EXPECTED[command][state]
    expected_after = AFTER.get((command, state), State.CLOSED if command == "QUIT" else state)
    assert conn.state is expected_after


def test_out_of_sequence_texts() -> None:
    conn = reach(State.GREETED)
    _, wire = receive_and_get(
        conn, b"MAIL FROM:<a@example.org>\r\nRCPT TO:<a@example.org>\r\nDATA\r\n"
    )
    assert wire == (
        b"503 5.5.1 Error: send HELO/EHLO first\r\n"
        b"503 5.5.1 Error: need MAIL command\r\n"
        b"503 5.5.1 Error: need MAIL command\r\n"
    )


def test_nested_mail_is_503() -> None:
    conn = reach(State.MAIL)
    _, wire = receive_and_get(conn, b"MAIL FROM:<x@example.org>\r\n")
    assert wire == b"503 5.5.1 Error: nested MAIL command\r\n"


def test_refused_text() -> None:
    conn = reach(State.REFUSED)
    _, wire = receive_and_get(conn, b"EHLO c\r\n")
    assert wire == b"503 5.5.1 Error: access denied, send QUIT\r\n"


# ---------------------------------------------------------------- states that read no commands


@pytest.mark.parametrize("command", list(COMMANDS))
def test_command_during_data_is_message_text(command: str) -> None:
    conn = reach(State.RCPT)
    receive_and_get(conn, b"DATA\r\n")
    events, wire = receive_and_get(conn, COMMANDS[command])
    # Text, handed on as it comes (but for a last octet that may begin the final dot).
    assert wire == b"" and all(isinstance(e, MessageData) for e in events)
    assert COMMANDS[command].startswith(
        b"".join(e.data for e in events if isinstance(e, MessageData))
    )
    assert conn.state is State.DATA


@pytest.mark.parametrize("command", list(COMMANDS))
def test_command_during_starttls_handshake_is_a_local_error(command: str) -> None:
    conn = reach(State.READY)
    receive_and_get(conn, b"STARTTLS\r\n")
    with pytest.raises(LocalProtocolError):
        conn.receive_data(COMMANDS[command])
    assert (conn.next_event(), conn.data_to_send()) == (PAUSED, b"")
    assert conn.state is State.STARTTLS


@pytest.mark.parametrize("command", list(COMMANDS))
def test_command_before_the_greeting_decision_waits(command: str) -> None:
    conn = ServerConnection(FULL)
    conn.next_event()
    conn.receive_data(COMMANDS[command])
    assert conn.data_to_send() == b""
    assert conn.state is State.CONNECT


@pytest.mark.parametrize("command", list(COMMANDS))
def test_command_after_close_is_ignored(command: str) -> None:
    conn = reach(State.READY)
    receive_and_get(conn, b"QUIT\r\n")
    events, wire = receive_and_get(conn, COMMANDS[command])
    assert events == [Closed(reason=CloseReason.QUIT)]
    assert wire == b""
    assert conn.state is State.CLOSED


@pytest.mark.parametrize("command", ["NOOP", "RSET", "QUIT", "MAIL"])
def test_command_during_sasl_exchange_is_a_response(command: str) -> None:
    conn = reach(State.READY)
    _, wire = receive_and_get(conn, b"AUTH PLAIN\r\n")
    assert wire == b"334 \r\n"
    assert conn.state is State.AUTH
    _, wire = receive_and_get(conn, COMMANDS[command])
    assert codes(wire) == [501]
    assert conn.state is State.READY


def test_transition_table_refuses_impossible_moves() -> None:
    """A trigger missing from the table is an engine bug, reported as LocalProtocolError."""
    from smtp_core._state import TRANSITIONS, Trigger, next_state

    assert next_state(State.DATA, Trigger.CLOSE) is State.CLOSED
    for state, triggers in TRANSITIONS.items():
        for trigger in set(Trigger) - set(triggers) - {Trigger.CLOSE}:
            with pytest.raises(LocalProtocolError):
                next_state(state, trigger)


# ---------------------------------------------------------------- the facts table


def test_every_state_has_facts_and_they_name_known_commands() -> None:
    assert set(FACTS) == set(State)
    for facts in FACTS.values():
        assert set(facts.refused) <= {*COMMAND_NAMES, UNKNOWN}
        assert "QUIT" not in facts.refused


REFUSALS = [
    (state, command, why) for state in SETUP for command, why in FACTS[state].refused.items()
]


@pytest.mark.parametrize(
    ("state", "command", "why"), REFUSALS, ids=[f"{c}-{s.name}" for s, c, _ in REFUSALS]
)
def test_each_refusal_sends_the_table_s_503_text(state: State, command: str, why: str) -> None:
    conn = reach(state)
    _, wire = receive_and_get(conn, COMMANDS[command])
    assert wire.startswith(f"503 5.5.1 {why}\r\n".encode())


@pytest.mark.parametrize("state", list(SETUP), ids=lambda s: s.name)
def test_in_transaction_follows_the_state(state: State) -> None:
    conn = reach(state)
    assert conn.in_transaction is (state in {State.MAIL, State.RCPT, State.CHUNKING})
    assert not conn.reading_content


def test_reading_content_during_data_and_while_a_chunk_arrives() -> None:
    conn = reach(State.RCPT)
    receive_and_get(conn, b"DATA\r\npartial")
    assert conn.state is State.DATA
    assert conn.in_transaction and conn.reading_content
    receive_and_get(conn, b"\r\n.\r\n")
    assert not conn.in_transaction and not conn.reading_content
    receive_and_get(conn, b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nBDAT 5\r\nab")
    assert conn.state is State.RCPT and conn.reading_content
    receive_and_get(conn, b"cde")
    assert conn.state is State.CHUNKING and conn.in_transaction and not conn.reading_content
    receive_and_get(conn, b"BDAT 3\r\nx")
    assert conn.reading_content
    receive_and_get(conn, b"yz")
    receive_and_get(conn, b"RSET\r\n")
    assert not conn.in_transaction and not conn.reading_content


def test_a_refused_chunk_is_content_too() -> None:
    """Its octets are read and dropped, never taken for commands."""
    conn = reach(State.READY)
    receive_and_get(conn, b"BDAT 4\r\nQU")
    assert conn.reading_content and not conn.in_transaction
    _, wire = receive_and_get(conn, b"IT")
    assert wire == b"503 5.5.1 Error: need RCPT command\r\n"
    assert not conn.reading_content
