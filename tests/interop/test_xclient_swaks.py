"""XCLIENT with swaks' --xclient options, on every transport: a trusted client (a content
filter, a test harness) names the real client, and the policies, the log and the stored
`Received:` header see that client; anyone else is not offered XCLIENT."""

from __future__ import annotations

import functools
import logging
import smtplib
import subprocess
from collections.abc import Callable

import pytest
from support import WAIT, Calls, Transport

from smtp_core import Config
from smtpkit.handlers import Accept, Context, Handler, Message, Pipeline, Policy


class Seen(Policy):
    """Records the client every stage sees."""

    blocking = False

    def __init__(self, calls: Calls) -> None:
        self.calls = calls

    def welcome(self, ctx: Context, client_ip: str) -> None:
        self.calls.add("welcome", client_ip)

    def mail(self, ctx: Context, sender: str, params: object) -> None:
        s = ctx.session
        self.calls.add("mail", (s.peer, s.client_name, s.helo_name, s.user))


class Store(Handler):
    def __init__(self, calls: Calls) -> None:
        self.calls = calls

    def data(self, message: Message) -> Accept:
        self.calls.add("message", message.read())
        return Accept()


def swaks(tool: Callable[[str], str], port: int, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            tool("swaks"),
            "--server",
            f"127.0.0.1:{port}",
            "--ehlo",
            "filter.example",
            "--from",
            "a@client.example",
            "--to",
            "rcpt@example.org",
            *options,
        ],
        capture_output=True,
        text=True,
        timeout=WAIT,
    )


@pytest.mark.parametrize("delim", [False, True], ids=["one-command", "two-commands"])
def test_swaks_xclient_names_the_client(
    transport: Transport,
    tool: Callable[[str], str],
    caplog: pytest.LogCaptureFixture,
    delim: bool,
) -> None:
    calls = Calls()
    pipeline = Pipeline(Seen(calls), deliver=functools.partial(Store, calls))
    first = ["--xclient-name", "mail.client.example", "--xclient-addr", "192.0.2.7"]
    second = ["--xclient-port", "40312", "--xclient-proto", "ESMTP", "--xclient-login", "alice"]
    options = [*first, *(["--xclient-delim"] if delim else []), *second]
    caplog.set_level(logging.INFO, logger="smtpkit")
    with transport.serve(pipeline, config=Config(xclient_trusted=("127.0.0.0/8",))) as server:
        result = swaks(tool, server.port, *options)
        assert result.returncode == 0, result.stdout + result.stderr
    assert "XCLIENT NAME ADDR PORT PROTO HELO LOGIN DESTADDR DESTPORT" in result.stdout
    assert calls.of("welcome")[0] == "127.0.0.1"  # swaks itself, then the client it names
    assert calls.of("welcome")[-1] == "192.0.2.7"
    assert calls.of("mail") == [
        (("192.0.2.7", 40312), "mail.client.example", "filter.example", "alice")
    ]
    (stored,) = calls.of("message")
    assert stored.startswith(
        b"Received: from filter.example (mail.client.example [192.0.2.7])\r\n"
        b"\tby localhost (smtpkit) with ESMTPA id "
    )
    assert "XCLIENT as [192.0.2.7]:40312" in caplog.text
    assert "peer=[192.0.2.7]:40312" in caplog.text  # the message's log line


def test_swaks_xclient_from_an_untrusted_client_is_refused(
    transport: Transport, tool: Callable[[str], str]
) -> None:
    calls = Calls()
    pipeline = Pipeline(Seen(calls), deliver=functools.partial(Store, calls))
    with transport.serve(pipeline, config=Config(xclient_trusted=("192.0.2.0/24",))) as server:
        refused = swaks(tool, server.port, "--xclient-addr", "192.0.2.7")
        with smtplib.SMTP(server.host, server.port, timeout=WAIT) as client:
            client.ehlo("filter.example")
            assert not client.has_extn("xclient")
            code, text = client.docmd("XCLIENT", "ADDR=192.0.2.7")
    assert refused.returncode != 0
    assert "Host did not advertise XCLIENT" in refused.stderr
    assert (code, text) == (550, b"5.7.0 Error: insufficient authorization")
    assert calls.of("message") == []
    assert set(calls.of("welcome")) == {"127.0.0.1"}
