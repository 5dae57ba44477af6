"""What each email-authentication policy (and rspamd) costs per message, with a local DNS.

    python3 benchmarks/policies.py [--messages 300] [--rspamd-url http://127.0.0.1:11333]

Each configuration is a Pipeline in front of a sink, served in this process (asyncio) on
127.0.0.1; one client sends `--messages` signed 2 KiB messages over one connection, one after
the other, and the report gives msgs/s and the median time per message (MAIL to the reply to
the end of data), and what each policy adds to the bare sink. DNS answers come from a stub on
127.0.0.1 (SPF, DKIM key, DMARC records), through the policies' shared cache: after the first
message every lookup is a cache hit, as for a real gateway seeing the same domains.
"""

from __future__ import annotations

import argparse
import base64
import smtplib
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dkim
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from smtp_core import Config
from smtpkit.handlers import Pipeline, Policy, SinkHandler
from smtpkit.handlers.policies import Arc, Dkim, DkimSign, Dmarc, Rspamd, Spf
from smtpkit.transports import running_server

HOST = "127.0.0.1"  # the only target, ever


class Zone:
    """A UDP DNS server on 127.0.0.1 answering the TXT records it holds, NXDOMAIN otherwise."""

    def __init__(self, records: dict[str, str]) -> None:
        self.records = records
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.address = f"{HOST}:{self.sock.getsockname()[1]}"
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                wire, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            query = dns.message.from_wire(wire)
            question = query.question[0]
            name = question.name.to_text(omit_final_dot=True).lower()
            response = dns.message.make_response(query)
            value = self.records.get(name)
            if value is not None and question.rdtype == dns.rdatatype.TXT:
                text = " ".join(f'"{value[i : i + 255]}"' for i in range(0, len(value), 255))
                response.answer.append(dns.rrset.from_text(question.name, 300, "IN", "TXT", text))
            else:
                response.set_rcode(dns.rcode.NXDOMAIN)
            self.sock.sendto(response.to_wire(), peer)


def keys() -> tuple[bytes, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, f"v=DKIM1; k=rsa; p={base64.b64encode(public).decode()}"


def run(make: Callable[[], list[Policy]], message: bytes, count: int) -> tuple[float, float]:
    """(msgs/s, median seconds per message) for a pipeline of these policies."""
    pipeline = Pipeline(*make(), deliver=SinkHandler)
    times: list[float] = []
    with (
        running_server(pipeline, config=Config(hostname="mx.bench")) as server,
        smtplib.SMTP(server.host, server.port, timeout=60) as smtp,
    ):
        smtp.ehlo("client.example.org")
        begun = time.perf_counter()
        for _ in range(count):
            start = time.perf_counter()
            smtp.sendmail("alice@example.org", ["bob@example.net"], message)
            times.append(time.perf_counter() - start)
        elapsed = time.perf_counter() - begun
    return count / elapsed, statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--rspamd-url", help="an rspamd normal worker to include")
    args = parser.parse_args()
    private, record = keys()
    zone = Zone(
        {
            "example.org": "v=spf1 ip4:127.0.0.0/8 -all",
            "sel._domainkey.example.org": record,
            "_dmarc.example.org": "v=DMARC1; p=reject",
        }
    )
    folder = Path(tempfile.mkdtemp(prefix="smtpkit-bench-"))
    (folder / "sel.private").write_bytes(private)
    body = ("The quick brown fox jumps over the lazy dog. " * 40 + "\r\n") * 1
    plain = (
        "From: Alice <alice@example.org>\r\nTo: bob@example.net\r\nSubject: bench\r\n"
        f"Message-ID: <b@example.org>\r\nDate: Tue, 01 Dec 2026 10:00:00 +0000\r\n\r\n{body}"
    ).encode()
    message = dkim.sign(plain, b"sel", b"example.org", private) + plain
    dns_options: dict[str, Any] = {"dns_servers": [zone.address], "timeout": 2.0}

    def signer() -> DkimSign:
        return DkimSign("example.org", "sel", folder / "sel.private", networks=["127.0.0.0/8"])

    configs: dict[str, Callable[[], list[Policy]]] = {
        "sink (no policy)": lambda: [],
        "spf": lambda: [Spf(**dns_options)],
        "dkim": lambda: [Dkim(**dns_options)],
        "arc": lambda: [Arc(**dns_options)],
        "dmarc (checks SPF and DKIM itself)": lambda: [Dmarc(**dns_options)],
        "dkim-sign (2048-bit RSA)": lambda: [signer()],
    }
    gateway: list[Callable[[], Policy]] = [
        lambda: Spf(**dns_options),
        lambda: Dkim(**dns_options),
        lambda: Arc(**dns_options),
        lambda: Dmarc(**dns_options),
    ]
    if args.rspamd_url:
        url = args.rspamd_url
        configs["rspamd"] = lambda: [Rspamd(url)]
        gateway.append(lambda: Rspamd(url))
    gateway.append(signer)
    rspamd = ", rspamd" if args.rspamd_url else ""
    configs[f"gateway: spf, dkim, arc, dmarc{rspamd}, dkim-sign"] = lambda: [
        make() for make in gateway
    ]
    print(f"{args.messages} messages of {len(message)} octets, one connection, asyncio")
    print("| configuration | msgs/s | median ms/msg | added ms/msg |\n|---|---:|---:|---:|")
    base = None
    for name, make in configs.items():
        rate, median = run(make, message, args.messages)
        base = median if base is None else base
        added = (median - base) * 1000
        print(f"| {name} | {rate:.0f} | {median * 1000:.2f} | {added:+.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
