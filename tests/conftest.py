"""Fixtures shared by every test folder: the transport under test (which accounts for what
its servers held), smtpkit processes, a TLS certificate, a DNS stub for the DNSBL checks, and
a real redis-server for the shared store.
What test files import (WAIT, the raw client, ...) is in support.py."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
import trustme
from support import (
    ROOT,
    TRANSPORT_IDS,
    WAIT,
    Process,
    Tls,
    Transport,
    check_released,
    open_sockets,
    terminate,
    wait_until,
)


@pytest.fixture(params=list(TRANSPORT_IDS))
def transport(request: pytest.FixtureRequest) -> Iterator[Transport]:
    """Each transport and loop in turn (`support.on_transports` narrows it). After the test,
    every server it made must have ended all its sessions, and no socket may be left open."""
    chosen = dataclasses.replace(TRANSPORT_IDS[request.param], servers=[])
    sockets_before = open_sockets()
    yield chosen
    check_released(chosen.servers, sockets_before)


@pytest.fixture
def smtpkit(tmp_path: Path) -> Iterator[Callable[..., Process]]:
    """smtpkit("serve", ...) runs `python -m smtpkit ARGS` in tmp_path; smtpkit(*args,
    script="x.py") runs an example instead, and smtpkit(*args, command=[...]) another program
    (an installed `smtpkit` script). Each must listen on a free port (give `--listen
    127.0.0.1:0`); each is stopped (SIGTERM) at teardown."""
    started: list[Process] = []

    def start(
        *args: str, script: str | None = None, command: Sequence[str | Path] | None = None
    ) -> Process:
        if command is None:
            program = [str(ROOT / "examples" / script)] if script else ["-m", "smtpkit"]
            command = [sys.executable, *program]
        log_path = tmp_path / f"smtpkit{len(started)}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [*map(str, command), *args],
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
        process.stop()


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    """A certificate for localhost, 127.0.0.1 and ::1 from a throwaway CA, as contexts and as
    PEM files."""
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1", "::1")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    folder = tmp_path_factory.mktemp("tls")
    files = {"cert": folder / "cert.pem", "key": folder / "key.pem", "ca": folder / "ca.pem"}
    cert.cert_chain_pems[0].write_to_path(str(files["cert"]))
    cert.private_key_pem.write_to_path(str(files["key"]))
    ca.cert_pem.write_to_path(str(files["ca"]))
    return Tls(server, client, **{name: str(path) for name, path in files.items()})


class DnsStub:
    """A UDP DNS server on 127.0.0.1 that answers A queries for `listed` names with
    127.0.0.2, the `records` it is given (`records[("example.org", "TXT")] = ["v=spf1 -all"]`:
    SPF, DKIM keys, DMARC), SERVFAIL for names in `failing`, NXDOMAIN for every other name,
    and nothing at all while `silent`."""

    def __init__(self) -> None:
        self.listed: set[str] = set()
        self.records: dict[tuple[str, str], list[str]] = {}
        self.failing: set[str] = set()
        self.queries: list[str] = []
        self.silent = False
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.address = self.sock.getsockname()[:2]
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                wire, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            with contextlib.suppress(Exception):
                query = dns.message.from_wire(wire)
                question = query.question[0]
                name = question.name.to_text(omit_final_dot=True).lower()
                self.queries.append(name)
                if self.silent:
                    continue
                response = dns.message.make_response(query)
                rdtype = dns.rdatatype.to_text(question.rdtype)
                given = self.records.get((name, rdtype))
                if name in self.failing:
                    response.set_rcode(dns.rcode.SERVFAIL)
                elif given is not None:
                    response.answer.append(
                        dns.rrset.from_text_list(question.name, 60, "IN", rdtype, given)
                    )
                elif name in self.listed and question.rdtype == dns.rdatatype.A:
                    response.answer.append(
                        dns.rrset.from_text(question.name, 60, "IN", "A", "127.0.0.2")
                    )
                elif any(known == name for known, _ in self.records):
                    pass  # the name exists, without records of this type: NOERROR, no answer
                else:
                    response.set_rcode(dns.rcode.NXDOMAIN)
                self.sock.sendto(response.to_wire(), peer)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def dns_stub() -> Iterator[DnsStub]:
    stub = DnsStub()
    try:
        yield stub
    finally:
        stub.close()


def _die_with_parent() -> None:
    """In a child before exec: SIGTERM when pytest dies, even by SIGKILL (Linux prctl)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _redis_answers(port: int, proc: subprocess.Popen[bytes]) -> bool:
    """Wait until the redis-server on `port` answers PING (True) or exits (False)."""

    def answers() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    return wait_until(lambda: answers() or proc.poll() is not None, WAIT) and answers()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Debian's redis-server on a free port of 127.0.0.1, its folder in a temp dir and no
    persistence, for the whole session: its URL. Missing, the test fails (scripts/setup-test
    installs it); no daemon outlives the session. Tests keep apart by their key prefix."""
    binary = shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/sbin/redis-server") if os.access(p, os.X_OK)),
        None,
    )
    if binary is None:
        pytest.fail("redis-server is not installed: run scripts/setup-test", pytrace=False)
    folder = tmp_path_factory.mktemp("redis")
    for _ in range(3):  # another process may take the free port first
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        with open(folder / "redis.log", "ab") as log:
            proc = subprocess.Popen(
                [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(folder),
                 "--save", "", "--appendonly", "no", "--daemonize", "no"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )  # fmt: skip
        if _redis_answers(port, proc):
            break
        terminate(proc)
    else:
        pytest.fail(f"redis-server did not start: {(folder / 'redis.log').read_text()}")
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        terminate(proc)
