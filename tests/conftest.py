"""Fixtures shared by every test folder: a DNS stub for the DNSBL checks."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest


class DnsStub:
    """A UDP DNS server on 127.0.0.1 that answers A queries for `listed` names with
    127.0.0.2, NXDOMAIN for every other name, and nothing at all while `silent`."""

    def __init__(self) -> None:
        self.listed: set[str] = set()
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
                if name in self.listed and question.rdtype == dns.rdatatype.A:
                    response.answer.append(
                        dns.rrset.from_text(question.name, 60, "IN", "A", "127.0.0.2")
                    )
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
