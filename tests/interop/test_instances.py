"""Issue 14, several instances: two `smtpkit serve` processes behind one real HAProxy (Debian's,
`send-proxy-v2`, round robin) share a Redis store, so that a per-IP rate limit holds across
both: the clients' connections alternate between the instances, neither of which sees more
than half of them, yet the one past the limit is refused.

Clients connect from their own loopback addresses (127.x.y.z): HAProxy's PROXY v2 header
carries each one's address to smtpkit, and the limit counts it, not HAProxy's.
"""

from __future__ import annotations

import random
import re
import socket
import subprocess
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import ROOT, Peer, Process, terminate, wait_until

from smtpkit.transports._configfile import read_config

pytestmark = pytest.mark.timeout(120)

#: Connections per client address in the window, on both instances together.
LIMIT = 3


def haproxy_config(front: int, backends: list[int], *, proxy: bool) -> str:
    """TCP mode, round robin over `backends`, with a PROXY v2 header to each when `proxy`."""
    servers = "\n".join(
        f"    server s{n} 127.0.0.1:{port}{' send-proxy-v2' if proxy else ''}"
        for n, port in enumerate(backends)
    )
    return (
        textwrap.dedent(
            f"""\
        global
            maxconn 4096
            nbthread 1
        defaults
            mode tcp
            timeout connect 5s
            timeout client 60s
            timeout server 60s
        frontend smtp
            bind 127.0.0.1:{front}
            default_backend smtpkit
        backend smtpkit
            balance roundrobin
        """
        )
        + servers
        + "\n"
    )


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
def haproxy(tmp_path: Path, tool: Callable[[str], str]) -> Iterator[Callable[..., int]]:
    """haproxy(backends, proxy=True): a real HAProxy in the foreground (`-db`) on a free port
    of 127.0.0.1 in front of `backends`; its port. Stopped at teardown."""
    binary = tool("haproxy")
    started: list[subprocess.Popen[bytes]] = []

    def start(backends: list[int], *, proxy: bool = True) -> int:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            front = probe.getsockname()[1]
        config = tmp_path / f"haproxy{len(started)}.cfg"
        config.write_text(haproxy_config(front, backends, proxy=proxy))
        log = tmp_path / f"haproxy{len(started)}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [binary, "-f", str(config), "-db"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        started.append(proc)
        assert wait_until(lambda: accepts(front) or proc.poll() is not None), log.read_text()
        assert proc.poll() is None, f"haproxy exited: {log.read_text()}"
        return front

    yield start
    for proc in started:
        terminate(proc)


def instance_config(path: Path, redis_url: str) -> Path:
    path.write_text(
        textwrap.dedent(
            f"""\
            proxy_listen = ["127.0.0.1:0"]
            proxy_trusted = ["127.0.0.1/32"]
            hostname = "mx.example"

            [[policy]]
            type = "rate-limit"
            store = "{redis_url}"
            window = 600
            ip = {{ connections = {LIMIT} }}

            [deliver]
            type = "sink"
            """
        )
    )
    return path


def greeting(front: int, source: str) -> bytes:
    """The first reply a client from `source` gets through HAProxy (it then says QUIT)."""
    peer = Peer(("127.0.0.1", front), source=(source, 0))
    try:
        reply = peer.reply()
        if reply.startswith(b"220"):
            assert peer.command("QUIT").startswith(b"221")
        return reply
    finally:
        peer.sock.close()


def start_pair(
    smtpkit: Callable[..., Process], haproxy: Callable[..., int], config: Path
) -> tuple[Process, Process, int]:
    one = smtpkit("serve", "--config", str(config))
    two = smtpkit("serve", "--config", str(config))
    return one, two, haproxy([one.port, two.port])


def fresh_addresses() -> tuple[str, str]:
    """Two client addresses of this run only: the Redis server outlives the test, its counts
    too."""
    prefix = f"127.{random.randrange(1, 255)}.{random.randrange(256)}"
    return f"{prefix}.2", f"{prefix}.3"


def seen_by(instances: tuple[Process, ...], client: str) -> list[int]:
    """How many of the client's connections each instance took."""
    pattern = rf"\bconnect from \[{re.escape(client)}\]"
    return [len(re.findall(pattern, instance.log())) for instance in instances]


def test_a_per_ip_limit_holds_across_two_instances(
    smtpkit: Callable[..., Process],
    haproxy: Callable[..., int],
    redis_server: str,
    tmp_path: Path,
) -> None:
    one, two, front = start_pair(
        smtpkit, haproxy, instance_config(tmp_path / "i.toml", redis_server)
    )
    client, other = fresh_addresses()

    replies = [greeting(front, client) for _ in range(LIMIT + 1)]
    assert [reply[:3] for reply in replies] == [b"220"] * LIMIT + [b"421"]
    assert f"Error: too many connections from [{client}]".encode() in replies[-1]
    assert greeting(front, other).startswith(b"220 mx.example")  # another address: its own count

    # Round robin gave each instance some of the client's connections, neither of them more
    # than the limit: only the shared count can have refused the last one.
    seen = seen_by((one, two), client)
    assert sum(seen) == LIMIT + 1 and 0 < min(seen) <= max(seen) <= LIMIT, seen


def test_without_a_shared_store_each_instance_counts_alone(
    smtpkit: Callable[..., Process], haproxy: Callable[..., int], tmp_path: Path
) -> None:
    """The control: the same traffic with a store per process lets every connection in, so
    the refusal above is the shared store's doing."""
    one, two, front = start_pair(smtpkit, haproxy, instance_config(tmp_path / "i.toml", "memory:"))
    client, _ = fresh_addresses()
    replies = [greeting(front, client) for _ in range(LIMIT + 1)]
    assert [reply[:3] for reply in replies] == [b"220"] * (LIMIT + 1)
    assert min(seen_by((one, two), client)) > 0


def test_the_deployment_guide_configurations_are_valid(
    tool: Callable[[str], str], tmp_path: Path
) -> None:
    """docs/deployment.md's HAProxy configuration passes `haproxy -c`, its TOML blocks read
    without a problem."""
    docs = (ROOT / "docs" / "deployment.md").read_text()
    haproxy_cfg = tmp_path / "haproxy.cfg"
    haproxy_cfg.write_text(docs.split("# /etc/haproxy/haproxy.cfg\n", 1)[1].split("```", 1)[0])
    check = subprocess.run(
        [tool("haproxy"), "-c", "-f", str(haproxy_cfg)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    users = tmp_path / "users"
    users.write_text("alice:secret\n")
    blocks = re.findall(r"```toml\n(.*?)```", docs, re.S)
    assert len(blocks) == 2
    for number, block in enumerate(blocks):
        path = tmp_path / f"block{number}.toml"
        path.write_text(block.replace("/etc/smtpkit/users", str(users)))
        assert read_config(str(path)).problems == (), block
