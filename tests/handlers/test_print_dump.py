"""PrintHandler: one log line per message, and with dump the whole message on stdout (like
aiosmtpd's Debugging handler), from Python and from the CLI."""

from __future__ import annotations

import functools
import logging
import os
import re
import smtplib
import subprocess
import sys
import time
from pathlib import Path

import pytest

from smtpkit.handlers import PrintHandler
from smtpkit.transports import running_server
from smtpkit.transports._pump import Mode, plan_for

pytestmark = pytest.mark.timeout(60)
MESSAGE = b"Subject: dump me\r\nFrom: a@example.org\r\n\r\nline one\r\n\xc3\xa9t\xc3\xa9 \xff\r\n"


def test_print_runs_inline() -> None:
    assert plan_for(PrintHandler).modes["data"] is Mode.INLINE


def test_log_line_without_dump(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="smtpkit.print")
    with running_server(PrintHandler) as server, smtplib.SMTP(server.host, server.port) as smtp:
        smtp.sendmail("a@example.org", ["b@example.org", "c@example.org"], MESSAGE)
    [record] = [r for r in caplog.records if r.name == "smtpkit.print"]
    size = record.getMessage().rsplit("size=", 1)[1]
    assert record.getMessage().startswith(
        "message from=<a@example.org> to=<b@example.org>,<c@example.org> size="
    )
    assert int(size) > len(MESSAGE)  # the Received header is counted too
    assert "MESSAGE FOLLOWS" not in capsys.readouterr().out


def test_dump_prints_the_whole_message(capsys: pytest.CaptureFixture[str]) -> None:
    factory = functools.partial(PrintHandler, dump=True)
    with running_server(factory) as server, smtplib.SMTP(server.host, server.port) as smtp:
        smtp.sendmail("a@example.org", ["b@example.org"], MESSAGE)
    out = capsys.readouterr().out
    m = re.search(r"-+ MESSAGE FOLLOWS -+\n(.*)\n-+ END MESSAGE -+\n", out, re.S)
    assert m is not None, out
    text = m.group(1)
    assert text.startswith("Received: from ")
    assert "Subject: dump me\n" in text and "\r" not in text
    assert text.endswith("line one\n\u00e9t\u00e9 \ufffd\n")  # undecodable: U+FFFD


def test_dump_from_the_cli(tmp_path: Path) -> None:
    out = tmp_path / "out"
    err = tmp_path / "err"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "smtpkit", "serve", "--handler", "print", "--dump",
             "--listen", "127.0.0.1:0"],
            stdout=stdout,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not (m := re.search(r"listening on \S+ port (\d+)", err.read_text())):
            assert time.monotonic() < deadline and proc.poll() is None, err.read_text()
            time.sleep(0.02)
        with smtplib.SMTP("127.0.0.1", int(m.group(1)), timeout=10) as smtp:
            smtp.sendmail("a@example.org", ["b@example.org"], MESSAGE)
        deadline = time.monotonic() + 10
        while "END MESSAGE" not in out.read_text(errors="replace"):
            assert time.monotonic() < deadline, out.read_text()
            time.sleep(0.02)
    finally:
        proc.terminate()
        proc.wait(10)
    text = out.read_text(errors="replace")
    assert "MESSAGE FOLLOWS" in text and "Subject: dump me" in text
    assert "message from=<a@example.org> to=<b@example.org>" in err.read_text()
