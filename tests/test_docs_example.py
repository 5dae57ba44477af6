"""The blocking-server example of docs/core.md: the page shows the file as it is, the file works,
and the page's interactive session gives the output it shows."""

from __future__ import annotations

import doctest
import os
import re
import select
import smtplib
import subprocess
import sys
from pathlib import Path

from support import WAIT

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "core.md"
EXAMPLE = ROOT / "examples" / "core_blocking_server.py"
MARKER = "<!-- example: examples/core_blocking_server.py -->"


def doc_listing() -> str:
    text = DOC.read_text(encoding="utf-8")
    match = re.search(re.escape(MARKER) + r"\n```python\n(.*?)^```$", text, re.S | re.M)
    assert match, f"no python block after {MARKER} in {DOC}"
    return match.group(1)


def test_docs_show_the_example_file_verbatim() -> None:
    assert doc_listing() == EXAMPLE.read_text(encoding="utf-8")


def test_docs_interactive_session() -> None:
    result = doctest.testfile(str(DOC), module_relative=False, verbose=False)
    assert result.attempted > 0
    assert result.failed == 0


def readline(proc: subprocess.Popen[bytes]) -> str:
    """One line of the server's output, or fail after WAIT seconds."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], WAIT)
    assert ready, f"the example printed nothing in {WAIT} s"
    return proc.stdout.readline().decode()


def test_example_receives_a_message_from_smtplib() -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    # Port 0: the OS picks a free port, and the example prints the one it got.
    proc = subprocess.Popen(
        [sys.executable, "-u", str(EXAMPLE), "127.0.0.1", "0"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        bufsize=0,
    )
    try:
        first = readline(proc)
        match = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+)\n", first)
        assert match, first
        client = smtplib.SMTP("127.0.0.1", int(match.group(1)), timeout=WAIT)
        try:
            assert client.ehlo("client.example")[0] == 250
            assert client.mail("sender@example.org")[0] == 250
            assert client.rcpt("rcpt@example.net")[0] == 250
            assert client.data(b"Subject: test\r\n\r\nHello.\r\n.dot\r\n")[0] == 250
            assert client.quit()[0] == 221
        finally:
            client.close()
    finally:
        proc.kill()
        output, _ = proc.communicate(timeout=WAIT)
    assert "<sender@example.org> -> rcpt@example.net: 31 bytes" in output.decode(), output
