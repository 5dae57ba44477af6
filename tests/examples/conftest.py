"""Fixtures for the example tests: run an example as a real process, and a DNS stub."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
STARTUP = 20.0  # seconds an example may take to start listening
_LISTENING = re.compile(r"listening on (\S+) port (\d+)")


class Running:
    """An example process that listens on `host`:`port`; its log (stderr) is `log_path`."""

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
                raise RuntimeError(f"example exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.02)
        raise RuntimeError(f"example did not start listening:\n{self.log()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def run_example(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    """run_example("gateway.py", *args): start it on a free port; stopped at teardown."""
    started: list[Running] = []

    def start(script: str, *args: str) -> Running:
        log_path = tmp_path / f"{script}.{len(started)}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, str(EXAMPLES / script), *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=tmp_path,
                env=env,
            )
        running = Running(proc, log_path)
        started.append(running)
        running.wait_listening()
        return running

    yield start
    for running in started:
        running.stop()
