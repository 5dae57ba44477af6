"""At the edge: the PROXY protocol through HAProxy, the cost of the metrics, and two instances
behind HAProxy against one (issue 14), on loopback, with Postfix's smtp-source.

    python3 benchmarks/edge.py [--rounds 3] [--connect-messages 4000] [--keepalive-messages 20000]
                               [--only proxy|metrics|instances ...]

Three comparisons, each a pair (or trio) of setups measured in turn within each round, every
setup on fresh processes and ports; the report gives the median msg/s over the rounds, the
server CPU per message (every smtpkit process, not HAProxy), and the ratio to the first setup:

- **proxy**: connect per message (`smtp-source -s 20 -m N -l 1024`), both legs through HAProxy:
  plain TCP passing, against `send-proxy-v2` to an smtpkit `--proxy-listen`. Target: at most
  10% slower.
- **metrics**: keep-alive, 1 KiB (`smtp-source -d -s 20 -m N -l 1024`) straight to smtpkit,
  without and with `--metrics`. Target: at most 5% slower. The endpoint is scraped at the end
  and must count every message.
- **instances**: connect per message through HAProxy, to one smtpkit and to two (round robin).
  The client, HAProxy and the servers share the machine's cores.

smtpkit runs as `smtpkit serve --handler sink --no-uvloop --log-level WARNING` (the stdlib loop
a default install gets). HAProxy (Debian's, `scripts/setup-test`) runs one thread, in the
foreground.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import procstat

HOST = "127.0.0.1"  # the only target, ever
SMTPKIT = (
    sys.executable, "-m", "smtpkit", "serve", "--handler", "sink", "--no-uvloop",
    "--log-level", "WARNING", "--hostname", "bench.localhost",
)  # fmt: skip
READY_TIMEOUT = 30.0


def find(tool: str) -> str:
    for path in (shutil.which(tool), f"/usr/sbin/{tool}", f"/usr/bin/{tool}"):
        if path and os.access(path, os.X_OK):
            return path
    raise SystemExit(f"{tool} not found: run scripts/setup-test")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_accepting(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        with suppress(OSError), socket.create_connection((HOST, port), timeout=1):
            return
        time.sleep(0.05)
    raise SystemExit(f"{what} is not listening on port {port}")


@contextmanager
def process(command: Sequence[str], port: int, what: str, folder: Path) -> Iterator[int]:
    """Run `command` until the block ends; its pid, once `port` accepts connections."""
    log = open(folder / f"{what}-{port}.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        list(command), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    try:
        wait_accepting(port, proc, what)
        yield proc.pid
    finally:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def smtpkit(stack: ExitStack, folder: Path, *extra: str, proxy: bool = False) -> tuple[int, int]:
    """An smtpkit server; (port, pid)."""
    port = free_port()
    listen = (
        ["--proxy-listen", f"{HOST}:{port}", "--proxy-trusted", f"{HOST}/32"]
        if proxy
        else ["--listen", f"{HOST}:{port}"]
    )
    pid = stack.enter_context(process([*SMTPKIT, *listen, *extra], port, "smtpkit", folder))
    return port, pid


def haproxy(stack: ExitStack, folder: Path, backends: list[int], *, proxy: bool) -> int:
    """HAProxy in TCP mode, round robin over `backends`; its port."""
    front = free_port()
    servers = "".join(
        f"    server s{n} {HOST}:{port}{' send-proxy-v2' if proxy else ''}\n"
        for n, port in enumerate(backends)
    )
    config = folder / f"haproxy-{front}.cfg"
    config.write_text(
        "global\n    maxconn 4096\n    nbthread 1\n"
        "defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 60s\n"
        "    timeout server 60s\n"
        f"frontend smtp\n    bind {HOST}:{front}\n    default_backend smtpkit\n"
        f"backend smtpkit\n    balance roundrobin\n{servers}"
    )
    stack.enter_context(
        process([find("haproxy"), "-f", str(config), "-db"], front, "haproxy", folder)
    )
    return front


@dataclass(frozen=True)
class Setup:
    name: str
    #: smtp-source flags (before the target).
    source: tuple[str, ...]
    #: How many smtpkit instances, and whether HAProxy is in front (with PROXY v2 or not).
    instances: int = 1
    haproxy: bool = False
    proxy: bool = False
    metrics: bool = False


@dataclass(frozen=True)
class Result:
    rate: float
    cpu_us: float


def run(setup: Setup, smtp_source: str, messages: int, folder: Path) -> Result:
    with ExitStack() as stack:
        metrics_port = free_port()
        extra = ("--metrics", f"{HOST}:{metrics_port}") if setup.metrics else ()
        servers = [
            smtpkit(stack, folder, *extra, proxy=setup.proxy) for _ in range(setup.instances)
        ]
        target = servers[0][0]
        if setup.haproxy:
            target = haproxy(stack, folder, [port for port, _ in servers], proxy=setup.proxy)
        pids = [pid for _, pid in servers]
        cpu_before = sum(procstat.cpu_seconds(pid) for pid in pids)
        command = [smtp_source, *setup.source, "-m", str(messages), f"{HOST}:{target}"]
        started = time.monotonic()
        subprocess.run(command, check=True, stdin=subprocess.DEVNULL, capture_output=True)
        wall = time.monotonic() - started
        cpu = sum(procstat.cpu_seconds(pid) for pid in pids) - cpu_before
        if setup.metrics:
            check_counted(metrics_port, messages)
    return Result(messages / wall, cpu / messages * 1e6)


def check_counted(port: int, messages: int) -> None:
    """The endpoint counted every message: the metrics were on, and right."""
    url = f"http://{HOST}:{port}/metrics"
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        with urllib.request.urlopen(url, timeout=5) as reply:
            text = reply.read().decode()
        match = re.search(r'^smtpkit_messages_accepted_total\{code="250"\} (\S+)$', text, re.M)
        if match and float(match.group(1)) >= messages:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"the metrics counted {match and match.group(1)} of {messages}")
        time.sleep(0.1)


CONNECT = ("-s", "20", "-l", "1024")
KEEPALIVE = ("-d", "-s", "20", "-l", "1024")


def comparisons(connect: int, keepalive: int) -> list[tuple[str, int, list[Setup]]]:
    return [
        (
            "proxy: connect per message, both legs through HAProxy",
            connect,
            [
                Setup("HAProxy, plain TCP", CONNECT, haproxy=True),
                Setup("HAProxy, send-proxy-v2", CONNECT, haproxy=True, proxy=True),
            ],
        ),
        (
            "metrics: keep-alive, 1 KiB",
            keepalive,
            [
                Setup("without --metrics", KEEPALIVE),
                Setup("with --metrics", KEEPALIVE, metrics=True),
            ],
        ),
        (
            "instances: connect per message through HAProxy (send-proxy-v2)",
            connect,
            [
                Setup("one instance", CONNECT, haproxy=True, proxy=True),
                Setup("two instances", CONNECT, instances=2, haproxy=True, proxy=True),
            ],
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connect-messages", type=int, default=4000)
    parser.add_argument("--keepalive-messages", type=int, default=20000)
    parser.add_argument("--only", nargs="+", choices=("proxy", "metrics", "instances"))
    args = parser.parse_args(argv)
    smtp_source = find("smtp-source")
    find("haproxy")
    with tempfile.TemporaryDirectory(prefix="smtpkit-edge-") as temp:
        folder = Path(temp)
        for title, messages, setups in comparisons(args.connect_messages, args.keepalive_messages):
            if args.only and title.split(":")[0] not in args.only:
                continue
            results: dict[str, list[Result]] = {setup.name: [] for setup in setups}
            for _ in range(args.rounds):
                for setup in setups:
                    results[setup.name].append(run(setup, smtp_source, messages, folder))
            print(f"\n{title} ({messages} messages, {args.rounds} rounds, median)\n")
            print("| setup | msg/s | server CPU µs/msg | vs first |")
            print("|---|---|---|---|")
            base = statistics.median(r.rate for r in results[setups[0].name])
            for setup in setups:
                rate = statistics.median(r.rate for r in results[setup.name])
                cpu = statistics.median(r.cpu_us for r in results[setup.name])
                print(f"| {setup.name} | {rate:,.0f} | {cpu:,.0f} | {rate / base:.2f}x |")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
