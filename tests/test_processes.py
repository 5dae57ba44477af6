"""`smtpkit serve --processes N`: N processes on one port, one graceful stop."""

from __future__ import annotations

import os
import re
import signal
import smtplib
import subprocess
import sys
import time
from pathlib import Path


def _wait_for_listeners(log: Path, count: int) -> set[int]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ports = set(map(int, re.findall(r"listening on 127\.0\.0\.1 port (\d+)", log.read_text())))
        lines = len(re.findall(r"listening on", log.read_text()))
        if lines >= count:
            return ports
        time.sleep(0.05)
    raise AssertionError(f"servers did not start:\n{log.read_text()}")


def _children(parent: int) -> set[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(parent)], capture_output=True)
    return {int(pid) for pid in out.stdout.split()}


def test_processes_share_one_port_and_stop_together(tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    maildir = tmp_path / "maildir"
    with log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "smtpkit", "serve", "--listen", "127.0.0.1:0",
             "--processes", "2", "--maildir", str(maildir)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, cwd=tmp_path,
        )  # fmt: skip
    try:
        ports = _wait_for_listeners(log, 2)
        assert len(ports) == 1, "port 0 must resolve to one port for every process"
        children = _children(server.pid)
        assert len(children) == 2
        port = ports.pop()
        for n in range(20):
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                client.sendmail("a@example.org", ["b@example.org"], f"Subject: {n}\r\n\r\nhi\r\n")
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0
        assert not any(os.path.exists(f"/proc/{pid}") for pid in children)
        assert len(list((maildir / "new").iterdir())) == 20
        assert not list((maildir / "tmp").iterdir())
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
