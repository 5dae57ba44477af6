"""The shared store as `smtpkit serve` uses it: greylisting state that survives a restart
(SQLite), is shared by `--processes` children (SQLite) and by two instances (a real Redis), and
the failed-login limit that `--auth-file` gets without configuration."""

from __future__ import annotations

import re
import smtplib
import sqlite3
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from support import WAIT, Process, wait_until

pytestmark = pytest.mark.timeout(120)

Smtpkit = Callable[..., Process]
#: So short that any retry comes after it, and a first attempt is still deferred: no test waits.
DELAY = 0.001


def config(path: Path, store: str) -> Path:
    path.write_text(
        textwrap.dedent(
            f"""\
            listen = ["127.0.0.1:0"]
            [[policy]]
            type = "greylist"
            store = "{store}"
            delay = {DELAY}
            [deliver]
            type = "sink"
            """
        )
    )
    return path


def rcpt(server: Process, recipient: str) -> int:
    """The reply code to RCPT TO:<recipient> in a transaction from a@example.net."""
    with smtplib.SMTP(server.host, server.port, timeout=WAIT) as client:
        client.ehlo("client.example")
        assert client.mail("a@example.net")[0] == 250
        return client.rcpt(recipient)[0]


def test_sqlite_greylisting_survives_a_restart(smtpkit: Smtpkit, tmp_path: Path) -> None:
    toml = config(tmp_path / "grey.toml", "sqlite:state.sqlite")  # in the server's folder
    first = smtpkit("serve", "--config", str(toml))
    assert rcpt(first, "b@example.org") == 451
    first.stop()
    with sqlite3.connect(tmp_path / "state.sqlite") as db:
        keys = [key for (key,) in db.execute("SELECT key FROM smtpkit_state")]
    assert keys == ["grey:first:127.0.0.0/24/a@example.net/b@example.org"]
    again = smtpkit("serve", "--config", str(toml))
    assert rcpt(again, "b@example.org") == 250  # the triplet was remembered: it passes
    assert rcpt(again, "c@example.org") == 451  # a new one is still deferred


def test_processes_share_the_sqlite_store(smtpkit: Smtpkit, tmp_path: Path) -> None:
    toml = config(tmp_path / "grey.toml", "sqlite:state.sqlite")
    server = smtpkit("serve", "--config", str(toml), "--processes", "2")
    assert wait_until(lambda: len(re.findall("listening on", server.log())) >= 2)
    recipients = [f"user{n}@example.org" for n in range(8)]
    assert [rcpt(server, r) for r in recipients] == [451] * 8
    # The kernel spreads the connections over both children: retries that reach the other
    # child than the first attempt pass only if the state is shared.
    assert [rcpt(server, r) for r in recipients] == [250] * 8


def test_two_instances_share_the_redis_store(
    smtpkit: Smtpkit, tmp_path: Path, redis_server: str
) -> None:
    toml = config(tmp_path / "grey.toml", redis_server)
    one = smtpkit("serve", "--config", str(toml))
    two = smtpkit("serve", "--config", str(toml))
    recipient = f"{tmp_path.name}@example.org"  # the Redis server outlives this test
    assert rcpt(one, recipient) == 451
    assert rcpt(two, recipient) == 250  # retried at the other instance


def auth_plain(server: Process, password: str) -> tuple[int, bytes]:
    with smtplib.SMTP(server.host, server.port, timeout=WAIT) as client:
        client.ehlo("client.example")
        client.user, client.password = "alice", password
        try:
            return client.auth("PLAIN", client.auth_plain, initial_response_ok=True)
        except smtplib.SMTPAuthenticationError as exc:
            return exc.smtp_code, exc.smtp_error


def test_auth_file_is_limited_by_default(smtpkit: Smtpkit, tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text("alice:secret\n")
    server = smtpkit(
        "serve", "--listen", "127.0.0.1:0", "--handler", "sink",
        "--auth-file", str(users), "--auth-allow-plaintext",
    )  # fmt: skip
    assert auth_plain(server, "secret")[0] == 235
    assert [auth_plain(server, f"guess{n}")[0] for n in range(9)] == [535] * 9
    refused = (421, b"4.7.0 Error: too many failed logins from [127.0.0.1], try later")
    assert auth_plain(server, "guess9") == refused
    assert auth_plain(server, "secret") == refused  # cooling down: no password is checked
    assert wait_until(lambda: "auth limit: 10 failed logins" in server.log())
