"""Fixtures for the interop tests: real Postfix tools and smtpkit processes.

The peers come from Debian through scripts/setup-test. A missing one fails the test with a
pointer to that script; it is never skipped (DESIGN.md section 6).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STARTUP = 20.0
_LISTENING = re.compile(r"listening on (\S+) port (\d+)")


def find_tool(name: str) -> str:
    """The path of a Debian peer; fails the test (never skips) when it is missing."""
    path = shutil.which(name)
    if path is None:
        for folder in ("/usr/sbin", "/sbin", "/usr/local/sbin", "/usr/bin"):
            candidate = Path(folder) / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                path = str(candidate)
                break
    if path is None:
        pytest.fail(f"{name} is not installed: run scripts/setup-test", pytrace=False)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_connectable(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + STARTUP
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} is not listening on port {port}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Sink:
    """A running smtp-sink; `dumps()` are the transactions it captured (with -d)."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, dump_dir: Path) -> None:
        self.proc = proc
        self.host = "127.0.0.1"
        self.port = port
        self.dump_dir = dump_dir

    def dumps(self, count: int = 1, timeout: float = 10.0) -> list[str]:
        """Wait until `count` transactions are dumped; return them all."""
        deadline = time.monotonic() + timeout
        while True:
            files = sorted(p for p in self.dump_dir.rglob("*") if p.is_file())
            texts = [p.read_text(errors="replace") for p in files]
            complete = [t for t in texts if "\n\n" in t]
            if len(complete) >= count or time.monotonic() > deadline:
                return complete
            time.sleep(0.05)


@pytest.fixture
def smtp_sink(tmp_path: Path) -> Iterator[Callable[..., Sink]]:
    """smtp_sink(*options): Postfix's smtp-sink on a free port, dumping every transaction."""
    binary = find_tool("smtp-sink")
    started: list[Sink] = []
    folders: list[Path] = []

    def start(*options: str) -> Sink:
        # smtp-sink writes as the unprivileged user, who cannot enter pytest's 0700 tmp_path.
        dump_dir = Path(tempfile.mkdtemp(prefix="smtpkit-sink-"))
        dump_dir.chmod(0o777)
        folders.append(dump_dir)
        port = free_port()
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        proc = subprocess.Popen(
            [binary, *user, "-d", f"{dump_dir}/%M.", *options, f"127.0.0.1:{port}", "50"],
            stdin=subprocess.DEVNULL,
        )
        sink = Sink(proc, port, dump_dir)
        started.append(sink)
        wait_connectable(port, proc, "smtp-sink")
        return sink

    yield start
    for sink in started:
        stop(sink.proc)
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


class Process:
    """An smtpkit process (the CLI or an example) listening on `host`:`port`."""

    def __init__(self, proc: subprocess.Popen[bytes], log_path: Path) -> None:
        self.proc = proc
        self.log_path = log_path
        self.host = ""
        self.port = 0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_listening(self) -> None:
        deadline = time.monotonic() + STARTUP
        while time.monotonic() < deadline:
            m = _LISTENING.search(self.log())
            if m:
                self.host, self.port = m.group(1), int(m.group(2))
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.02)
        raise RuntimeError(f"not listening after {STARTUP} s:\n{self.log()}")


@pytest.fixture
def smtpkit(tmp_path: Path) -> Iterator[Callable[..., Process]]:
    """smtpkit("serve", ...) runs `python -m transports ARGS`; smtpkit(script=...) an example.
    Either listens on a free port (give `--listen 127.0.0.1:0`)."""
    started: list[Process] = []

    def start(*args: str, script: str | None = None) -> Process:
        log_path = tmp_path / f"smtpkit{len(started)}.log"
        command = (
            [sys.executable, str(ROOT / "examples" / script)]
            if script
            else [
                sys.executable,
                "-m",
                "transports",
            ]
        )
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [*command, *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=tmp_path,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        process = Process(proc, log_path)
        started.append(process)
        process.wait_listening()
        return process

    yield start
    for process in started:
        stop(process.proc)


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A throwaway CA and a certificate for localhost/127.0.0.1, as PEM files."""
    import trustme

    folder = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    files = {"ca": folder / "ca.pem", "cert": folder / "cert.pem", "key": folder / "key.pem"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    cert.cert_chain_pems[0].write_to_path(str(files["cert"]))
    cert.private_key_pem.write_to_path(str(files["key"]))
    return files
