"""Password guessing against `smtpkit serve --auth-file` (plaintext AUTH, a sink), on loopback.

    python3 benchmarks/auth_bruteforce.py [--seconds 10] [--guessers 20] [--transport asyncio]

For each configuration (the failed-login limit off, as before it existed, and the default
that --auth-file gets), it measures:

    checks       the passwords the server checks for one guessing address in the time given,
                 and per second (AUTH PLAIN, three per connection as the engine allows,
                 reconnecting)
    idle         a legitimate user's latency, connect to 235, alone (median)
    under attack the same while `--guessers` guessers run, each from its own address
                 (127.0.0.10 on): median and 95th percentile

The guessers run in threads of a child process, so that the legitimate user's timing is not
taken in the same interpreter. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import base64
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from attack import HOST, PY, Server

USER, PASSWORD = "alice", "correct horse"


def _auth_line(password: str) -> bytes:
    token = base64.b64encode(f"\0{USER}\0{password}".encode()).decode()
    return f"AUTH PLAIN {token}\r\n".encode()


class Client:
    """A raw SMTP client bound to `source`, reading one reply at a time."""

    def __init__(self, port: int, source: str) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=30, source_address=(source, 0))
        self.file = self.sock.makefile("rb")
        self.reply()
        self.sock.sendall(b"EHLO bench.example\r\n")
        self.reply()

    def reply(self) -> bytes:
        lines = b""
        while True:
            line = self.file.readline()
            lines += line
            if len(line) < 4 or line[3:4] != b"-":
                return lines

    def auth(self, password: str) -> bytes:
        self.sock.sendall(_auth_line(password))
        return self.reply()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def guess(port: int, source: str, until: float, counts: dict[str, int]) -> None:
    """Wrong passwords from `source` until `until`, reconnecting whenever the server closes."""
    n = 0
    while time.monotonic() < until:
        try:
            client = Client(port, source)
        except OSError:
            counts["refused connections"] = counts.get("refused connections", 0) + 1
            continue
        try:
            while time.monotonic() < until:
                n += 1
                reply = client.auth(f"guess{n}")
                kind = (
                    "checked"
                    if reply.startswith(b"535") or b"failed authentication attempts" in reply
                    else "limited"
                    if b"failed logins" in reply
                    else "other"
                )
                counts[kind] = counts.get(kind, 0) + 1
                if not reply.startswith(b"535"):
                    break  # a 421: the server closes
        except OSError:
            pass
        finally:
            client.close()


def guessers(port: int, sources: list[str], seconds: float) -> dict[str, int]:
    """Run one guessing thread per source; their counts, summed."""
    until = time.monotonic() + seconds
    per_thread: list[dict[str, int]] = [{} for _ in sources]
    threads = [
        threading.Thread(target=guess, args=(port, source, until, counts))
        for source, counts in zip(sources, per_thread, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    total: dict[str, int] = {}
    for counts in per_thread:
        for kind, value in counts.items():
            total[kind] = total.get(kind, 0) + value
    # The failure that reaches the limit is checked, then answered 421: once per address.
    reached = sum(1 for counts in per_thread if counts.get("limited"))
    total["checked"] = total.get("checked", 0) + reached
    return total


def login_latency(port: int, until: float, at_least: int) -> list[float]:
    """The legitimate user's sessions (connect, EHLO, AUTH, QUIT) in ms, back to back."""
    times: list[float] = []
    while time.monotonic() < until or len(times) < at_least:
        start = time.perf_counter()
        client = Client(port, HOST)
        reply = client.auth(PASSWORD)
        client.close()
        if not reply.startswith(b"235"):
            raise RuntimeError(f"the legitimate user was refused: {reply!r}")
        times.append((time.perf_counter() - start) * 1000)
    return times


def measure(args: argparse.Namespace, name: str, flags: list[str], folder: Path) -> str:
    server = Server(["--handler", "sink", "--auth-allow-plaintext", *args.server, *flags], folder)
    try:
        one = guessers(server.port, ["127.0.0.2"], args.seconds)
        idle = login_latency(server.port, time.monotonic() + min(args.seconds, 3), 20)
        sources = [f"127.0.0.{10 + n}" for n in range(args.guessers)]
        attack = subprocess.Popen(
            [PY, __file__, "--guess", str(server.port), str(args.seconds), *sources],
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(0.5)  # let the guessers get going before timing
        busy = login_latency(server.port, time.monotonic() + args.seconds - 1, 20)
        attack_counts = attack.communicate(timeout=args.seconds + 60)[0].strip()
    finally:
        server.stop()
    p95 = statistics.quantiles(busy, n=20)[-1]
    checked = one.get("checked", 0)
    return (
        f"| {name} | {checked:,} ({checked / args.seconds:,.1f}/s) | "
        f"{statistics.median(idle):.1f} ms | {statistics.median(busy):.1f} ms / {p95:.1f} ms | "
        f"{attack_counts} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per measurement")
    parser.add_argument("--guessers", type=int, default=20)
    parser.add_argument("--transport", default="asyncio", help="asyncio, anyio or threads")
    parser.add_argument("--guess", nargs="+", help=argparse.SUPPRESS)  # the child's role
    args = parser.parse_args(argv)
    if args.guess:
        port, seconds, *sources = args.guess
        counts = guessers(int(port), sources, float(seconds))
        print(", ".join(f"{kind} {value}" for kind, value in sorted(counts.items())))
        return 0
    args.server = ["--transport", args.transport]
    with tempfile.TemporaryDirectory(prefix="smtpkit-auth-") as tmp:
        folder = Path(tmp)
        users = folder / "users"
        users.write_text(f"{USER}:{PASSWORD}\n")
        off = folder / "off.toml"
        off.write_text(f'[[policy]]\ntype = "password-auth"\nfile = "{users}"\nmax_failures = 0\n')
        rows = [
            measure(args, "limit off (max_failures = 0)", ["--config", str(off)], folder),
            measure(args, "default (--auth-file)", ["--auth-file", str(users)], folder),
        ]
    print(f"transport {args.transport}, {args.seconds:g} s per measurement, "
          f"{args.guessers} guessers\n")  # fmt: skip
    print(f"| configuration | checks in {args.seconds:g} s, one address | login idle | "
          "login under attack "
          "(median / p95) | the guessers' replies |")  # fmt: skip
    print("|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
