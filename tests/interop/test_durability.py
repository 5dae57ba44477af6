"""Crash the server with SIGKILL right after the client reads the 250 for DATA, many times over.

Every message whose 250 the client read must be complete in new/; nothing partial may ever be
in new/ (a crash before the reply may leave a file in tmp/, never in new/). In between, the
server is also killed right after the final dot, before its reply, where a message may or may
not have made it, but never in part.

The messages pass the spool threshold, so each is in a spool file (hard-linked into the Maildir,
the spool being on the same file system) when the server dies: every restart must remove the
dead server's spool folder, and leave only its own.

The order of the steps themselves (write, fsync, rename, fsync the folder, then the reply) is
asserted by tests/handlers/test_maildir_delivery.py.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]

ROUNDS = 20
BODY_LINES = 4000  # about 300 KB: many writes, so a crash has something to interrupt
_LISTENING = re.compile(r"listening on (\S+) port (\d+)")


def message(n: int) -> bytes:
    lines = [f"Subject: crash test {n}", f"X-Round: {n}", ""]
    lines += [f"round {n} line {i:05d} " + "x" * 60 for i in range(BODY_LINES)]
    lines.append(f"END OF ROUND {n}")
    return ("\r\n".join(lines) + "\r\n").encode()


def start_server(
    maildir: Path, log_path: Path, transport: str
) -> tuple[subprocess.Popen[bytes], int]:
    log = open(log_path, "wb")  # noqa: SIM115 - the child keeps writing to it
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "smtpkit",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--maildir",
            str(maildir),
            "--hostname",
            "crash.example",
            "--transport",
            transport,
            "--spool-dir",
            str(maildir.parent / "spool"),
            "--spool-threshold",
            "65536",
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    log.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        m = _LISTENING.search(log_path.read_text(errors="replace"))
        if m:
            return proc, int(m.group(2))
        if proc.poll() is not None:
            break
        time.sleep(0.01)
    proc.kill()
    raise RuntimeError(f"server did not start:\n{log_path.read_text(errors='replace')}")


def read_reply(replies: object) -> bytes:
    while True:
        line = replies.readline()  # type: ignore[attr-defined]
        if not line or line[3:4] != b"-":
            return bytes(line)


def send_and_kill(port: int, proc: subprocess.Popen[bytes], body: bytes, *, wait: bool) -> bytes:
    """Send one message; SIGKILL the server at once after its final reply (`wait`) or right
    after the final dot (not `wait`). Returns the final reply read, or b""."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        replies = sock.makefile("rb")
        assert read_reply(replies).startswith(b"220")
        for command in (b"EHLO client", b"MAIL FROM:<a@example.org>", b"RCPT TO:<b@example.org>"):
            sock.sendall(command + b"\r\n")
            assert read_reply(replies).startswith(b"250"), command
        sock.sendall(b"DATA\r\n")
        assert read_reply(replies).startswith(b"354")
        sock.sendall(body + b".\r\n")
        final = read_reply(replies) if wait else b""
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    return final


@pytest.mark.parametrize("transport", ["asyncio", "threads", "anyio"])
def test_sigkill_after_the_250_never_loses_or_tears_a_message(
    tmp_path: Path, transport: str
) -> None:
    maildir = tmp_path / "maildir"
    acknowledged: list[int] = []
    for n in range(ROUNDS):
        proc, port = start_server(maildir, tmp_path / f"server{n}.log", transport)
        try:
            final = send_and_kill(port, proc, message(n), wait=n % 4 != 3)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if final:
            assert final.startswith(b"250 "), final
            acknowledged.append(n)
        # Only this server's spool folder is left: it removed the one of the server before.
        assert spool_folders(tmp_path) == [f"instance-{proc.pid}"], "a dead server's spool left"

        # After every crash: each file in new/ is one whole message.
        stored: dict[int, bytes] = {}
        for path in (maildir / "new").iterdir():
            content = path.read_bytes()
            m = re.search(rb"X-Round: (\d+)\r\n", content)
            assert m is not None, f"torn file in new/: {path.name}"
            round_no = int(m.group(1))
            assert content.endswith(message(round_no)), f"partial message in new/: {path.name}"
            assert round_no not in stored, "a message stored twice"
            stored[round_no] = content
        missing = [r for r in acknowledged if r not in stored]
        assert not missing, f"acknowledged but lost: {missing}"
    assert len(acknowledged) >= ROUNDS * 3 // 4
    # The last restart cleans up after the last crash; a clean stop leaves nothing at all.
    proc, port = start_server(maildir, tmp_path / "last.log", transport)
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        assert sock.makefile("rb").readline().startswith(b"220")  # serving: the spool is set up
    assert spool_folders(tmp_path) == [f"instance-{proc.pid}"]
    proc.terminate()
    assert proc.wait(30) == 0
    assert spool_folders(tmp_path) == []


def spool_folders(tmp_path: Path) -> list[str]:
    """The instance folders in the spool directory, each named instance-PID-RANDOM: by PID."""
    spool = tmp_path / "spool"
    names = sorted(p.name for p in spool.iterdir()) if spool.is_dir() else []
    return [name.rsplit("-", 1)[0] for name in names]
