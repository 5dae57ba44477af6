"""The README's fake server is real code: run it and talk to it."""

from __future__ import annotations

import re
import signal
import smtplib
import socket
import subprocess
import sys
import time
from pathlib import Path

README = Path(__file__).parent.parent / "README.md"


def _fake_server_source() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    [source] = [block for block in blocks if "class FakeHandler" in block]
    return source


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_readme_fake_server_is_about_25_lines() -> None:
    lines = [line for line in _fake_server_source().splitlines() if line.strip()]
    assert len(lines) <= 25


def test_readme_fake_server_answers_like_the_seed(tmp_path: Path) -> None:
    script = tmp_path / "fake_smtp.py"
    script.write_text(_fake_server_source())
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, str(script), str(port)], stdin=subprocess.DEVNULL, cwd=tmp_path
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                client = smtplib.SMTP("127.0.0.1", port, timeout=10)
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline, "the README server did not start"
                assert server.poll() is None, "the README server exited"
                time.sleep(0.05)
        with client:
            client.ehlo("client.example")
            assert client.mail("alice@example.org") == (250, b"2.1.0 alice@example.org, sender ok")
            assert client.rcpt("bob@example.org") == (250, b"2.1.5 bob@example.org, recipient ok")
            code, text = client.data(b"Subject: hi\r\n\r\nhello\r\n")
            assert (code, text) == (250, b"2.0.0 Requested mail action okay, completed.")
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
