"""The shared store (SQLite, Redis and memory backends) and the policies that keep their state
in it: Greylist, RateLimit and the failed-login limit of PasswordAuth. The same suite runs on
every backend, the end-to-end tests on every transport too; time is a clock the test moves."""

from __future__ import annotations

import logging
import smtplib
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from support import WAIT, Calls, Transport

from smtp_core import Accept, Close, Config, MailParams, RcptParams, Reject
from smtpkit.handlers import Context, Handler, HookResult, Pipeline, SinkHandler
from smtpkit.handlers.policies import (
    AuthLimit,
    ConfigError,
    Greylist,
    Limits,
    MemoryStore,
    PasswordAuth,
    RateLimit,
    RedisStore,
    SqliteStore,
    Store,
    StoreError,
    build_policy,
    open_store,
)

pytestmark = pytest.mark.timeout(120)

PARAMS = RcptParams()
MAIL = MailParams()
MESSAGE = b"Subject: hi\r\n\r\nhello\r\n"


class Clock:
    """The store's time: it moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


MakeStore = Callable[[Clock], Store]


@pytest.fixture(params=["sqlite", "redis", "memory"])
def make_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[[Clock], Store]]:
    """make_store(clock): a store of the backend under test, fresh (Redis: its own key
    prefix); a second call opens the same state again (as a restarted server would)."""
    made: list[Store] = []
    prefix = f"test-{uuid.uuid4().hex}:"
    memory: dict[Clock, MemoryStore] = {}

    def make(clock: Clock) -> Store:
        store: Store
        if request.param == "sqlite":
            store = SqliteStore(tmp_path / "state.sqlite", clock=clock)
        elif request.param == "redis":
            url = request.getfixturevalue("redis_server")
            store = RedisStore(url, clock=clock, prefix=prefix)
        else:
            store = memory.setdefault(clock, MemoryStore(clock))
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def ctx(ip: str = "192.0.2.7", sender: str = "a@example.net", user: str | None = None) -> Any:
    """A policy's Context for a client at `ip`, in a transaction from `sender`."""
    context = Context()
    context.session = SimpleNamespace(client_ip=ip, user=user)
    context.envelope = SimpleNamespace(sender=sender)
    return context


# ===================================================================================== store


def test_incr_counts_in_a_fixed_window(make_store: MakeStore, clock: Clock) -> None:
    store = make_store(clock)
    assert [store.incr("k", 60) for _ in range(3)] == [1, 2, 3]
    clock.advance(59)
    assert store.incr("k", 60) == 4  # later increments keep the first expiry
    clock.advance(1)
    assert store.incr("k", 60) == 1  # the window is over: a new count
    assert store.incr("other", 60) == 1


def test_get_put_and_expiry(make_store: MakeStore, clock: Clock) -> None:
    store = make_store(clock)
    assert store.get("k") is None
    store.put("k", 1.5, 10)
    assert store.get("k") == 1.5
    store.put("k", 2.25, 10)  # replaces, with a new expiry
    clock.advance(9.5)
    assert store.get("k") == 2.25
    clock.advance(0.5)
    assert store.get("k") is None


def test_add_keeps_the_first_value_until_it_expires(make_store: MakeStore, clock: Clock) -> None:
    store = make_store(clock)
    assert store.add("k", 1_700_000_000.25, 100) is None  # stored
    assert store.add("k", 5, 100) == 1_700_000_000.25  # present: kept, and returned
    clock.advance(100)
    assert store.add("k", 7, 100) is None
    assert store.get("k") == 7


def test_state_survives_reopening(make_store: MakeStore, clock: Clock) -> None:
    first = make_store(clock)
    first.add("grey", 42, 1000)
    first.incr("n", 1000)
    first.close()
    again = make_store(clock)
    assert again.get("grey") == 42
    assert again.incr("n", 1000) == 2


def test_concurrent_increments_are_atomic(make_store: MakeStore, clock: Clock) -> None:
    store = make_store(clock)
    threads, each = 8, 25
    barrier = threading.Barrier(threads)
    seen: list[int] = []
    lock = threading.Lock()

    def work() -> None:
        barrier.wait(WAIT)
        counts = [store.incr("n", 60) for _ in range(each)]
        with lock:
            seen.extend(counts)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(WAIT)
    assert sorted(seen) == list(range(1, threads * each + 1))  # no count lost or repeated


def test_only_one_concurrent_add_wins(make_store: MakeStore, clock: Clock) -> None:
    store = make_store(clock)
    threads = 8
    barrier = threading.Barrier(threads)
    answers: dict[int, float | None] = {}

    def work(value: int) -> None:
        barrier.wait(WAIT)
        answers[value] = store.add("first", value, 60)

    workers = [threading.Thread(target=work, args=(v,)) for v in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(WAIT)
    winners = [value for value, answer in answers.items() if answer is None]
    assert len(winners) == 1
    assert {answers[v] for v in answers if v not in winners} == {winners[0]}
    assert store.get("first") == winners[0]


def test_sqlite_is_shared_by_processes(tmp_path: Path) -> None:
    """Several processes (as --processes children) count in one file without losing a count."""
    path = tmp_path / "state.sqlite"
    script = (
        "import sys\n"
        "from smtpkit.handlers.policies import SqliteStore\n"
        "store = SqliteStore(sys.argv[1])\n"
        "sys.stdin.readline()\n"  # the start line: every process is ready
        "print(' '.join(str(store.incr('n', 600)) for _ in range(100)))\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = [proc.communicate("go\n", timeout=WAIT)[0] for proc in procs]
    assert all(proc.returncode == 0 for proc in procs)
    counts = sorted(int(n) for out in outputs for n in out.split())
    assert counts == list(range(1, 401))


def test_open_store_names() -> None:
    assert isinstance(open_store("memory:"), MemoryStore)
    with pytest.raises(ValueError, match="not a store"):
        open_store("postgres://x")
    with pytest.raises(ValueError, match="needs a file name"):
        open_store("sqlite:")
    with pytest.raises(ValueError, match="no such folder"):
        open_store("sqlite:/nonexistent/folder/state.sqlite")


def test_an_unreachable_redis_is_a_temporary_failure(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    store = RedisStore(f"redis://127.0.0.1:{port}/0", timeout=2)
    with pytest.raises(StoreError):
        store.incr("n", 60)
    greylist = Greylist(store=store)
    assert greylist.rcpt(ctx(), "b@example.org", PARAMS) == Reject(
        451, "4.3.0 Error: temporary failure, try again later"
    )
    limit = RateLimit(ip=Limits(connections=5), store=store)
    answer = limit.welcome(ctx(), "192.0.2.7")
    assert isinstance(answer, Close) and answer.code == 421
    assert AuthLimit(store=store).check("192.0.2.7") == Reject(
        454, "4.7.0 Temporary authentication failure"
    )
    assert "store unavailable" in caplog.text


# ================================================================================== greylist


def grey(policy: Greylist, ip: str = "192.0.2.7", rcpt: str = "b@example.org", **kw: Any) -> Any:
    return policy.rcpt(ctx(ip, **kw), rcpt, PARAMS)


def test_greylist_defers_a_new_triplet_until_the_delay(make_store: MakeStore, clock: Clock) -> None:
    greylist = Greylist(delay=300, store=make_store(clock))
    first = grey(greylist)
    assert first == Reject(
        451,
        "4.7.1 <b@example.org>: Recipient address rejected: Greylisted, try again in 300 seconds",
    )
    clock.advance(100)
    assert "try again in 200 seconds" in grey(greylist).text  # the delay counts from the first
    assert grey(greylist, rcpt="c@example.org").code == 451  # another triplet
    clock.advance(200)
    assert grey(greylist) is None  # retried after the delay: passes
    clock.advance(30 * 86400)
    assert grey(greylist) is None  # and keeps passing


def test_greylist_triplet_is_per_network_sender_and_recipient(
    make_store: MakeStore, clock: Clock
) -> None:
    greylist = Greylist(delay=60, store=make_store(clock), auto_allow=0)
    assert grey(greylist, "192.0.2.7").code == 451
    assert grey(greylist, "2001:db8:1:2::7").code == 451
    clock.advance(60)
    assert grey(greylist, "192.0.2.200") is None  # same /24: a farm retrying from a neighbour
    assert grey(greylist, "::ffff:192.0.2.9") is None  # IPv4-mapped is IPv4
    assert grey(greylist, "2001:db8:1:2:ffff::1") is None  # same /64
    assert grey(greylist, "192.0.3.7").code == 451  # another /24
    assert grey(greylist, "2001:db8:1:3::7").code == 451  # another /64
    assert grey(greylist, rcpt="B@Example.ORG") is None  # without case
    assert grey(greylist, sender="prvs=0123abcd=A@example.net") is None  # BATV tag dropped
    assert grey(greylist, sender="other@example.net").code == 451


def test_greylist_forgets_triplets_not_retried_in_the_retry_window(
    make_store: MakeStore, clock: Clock
) -> None:
    greylist = Greylist(delay=300, retry_window=3600, store=make_store(clock))
    assert grey(greylist).code == 451
    clock.advance(3600)
    assert "in 300 seconds" in grey(greylist).text  # started over


def test_greylist_auto_allows_a_client_after_n_passes(make_store: MakeStore, clock: Clock) -> None:
    greylist = Greylist(delay=60, auto_allow=2, store=make_store(clock))
    for rcpt in ("one@example.org", "two@example.org"):
        assert grey(greylist, rcpt=rcpt).code == 451
    clock.advance(60)
    assert grey(greylist, rcpt="one@example.org") is None
    assert grey(greylist, rcpt="one@example.org") is None  # the same triplet counts once
    assert grey(greylist, rcpt="new@example.org").code == 451  # one pass is not enough
    assert grey(greylist, rcpt="two@example.org") is None  # the second pass
    assert grey(greylist, "192.0.2.99", rcpt="never-seen@example.org") is None  # allowed
    assert grey(greylist, "198.51.100.1", rcpt="never-seen@example.org").code == 451


def test_greylist_skips_authenticated_and_exempt_clients(
    make_store: MakeStore, clock: Clock
) -> None:
    greylist = Greylist(store=make_store(clock), exempt=["10.0.0.0/8"])
    assert grey(greylist, user="alice") is None
    assert grey(greylist, "10.1.2.3") is None
    assert grey(greylist).code == 451


def test_greylist_checks_its_arguments(tmp_path: Path) -> None:
    store = MemoryStore()
    with pytest.raises(ValueError, match="delay < retry_window"):
        Greylist(delay=600, retry_window=300, store=store)
    with pytest.raises(ValueError, match="auto_allow"):
        Greylist(auto_allow=-1, store=store)
    with pytest.raises(ValueError, match="ipv4_prefix"):
        Greylist(ipv4_prefix=33, store=store)


# ================================================================================ rate limits


def test_rate_limit_per_ip(make_store: MakeStore, clock: Clock) -> None:
    limit = RateLimit(
        ip=Limits(connections=2, messages=2, recipients=3), window=60, store=make_store(clock)
    )
    assert limit.welcome(ctx(), "192.0.2.7") is None
    assert limit.welcome(ctx(), "192.0.2.7") is None
    assert limit.welcome(ctx(), "192.0.2.7") == Close(
        421, "4.7.0 Error: too many connections from [192.0.2.7]"
    )
    assert limit.welcome(ctx("192.0.2.8"), "192.0.2.8") is None  # another client
    assert limit.mail(ctx(), "a@example.net", MAIL) is None
    assert limit.mail(ctx(), "a@example.net", MAIL) is None
    assert limit.mail(ctx(), "a@example.net", MAIL) == Reject(
        450, "4.7.1 Error: too much mail from [192.0.2.7]"
    )
    answers = [limit.rcpt(ctx(), "b@example.org", PARAMS) for _ in range(4)]
    assert answers[:3] == [None] * 3
    assert answers[3] == Reject(450, "4.7.1 Error: too many recipients from [192.0.2.7]")
    clock.advance(60)
    assert limit.welcome(ctx(), "192.0.2.7") is None  # a new window


def test_rate_limit_per_ipv6_network(make_store: MakeStore, clock: Clock) -> None:
    limit = RateLimit(ip=Limits(connections=1), store=make_store(clock))
    assert limit.welcome(ctx("2001:db8::1"), "2001:db8::1") is None
    refused = limit.welcome(ctx("2001:db8::ffff:2"), "2001:db8::ffff:2")  # the same /64
    assert isinstance(refused, Close) and refused.code == 421
    assert limit.welcome(ctx("2001:db8:0:1::1"), "2001:db8:0:1::1") is None


def test_rate_limit_per_sender_and_user(make_store: MakeStore, clock: Clock) -> None:
    limit = RateLimit(
        sender=Limits(messages=1, recipients=1), user=Limits(messages=2), store=make_store(clock)
    )
    assert limit.mail(ctx("192.0.2.1"), "Boss@Example.net", MAIL) is None
    assert limit.mail(ctx("192.0.2.2"), "boss@example.NET", MAIL) == Reject(
        450, "4.7.1 Error: too much mail from this sender"
    )  # one sender, whatever the client and the case
    assert limit.mail(ctx(), "", MAIL) is None  # the null sender is not counted
    assert limit.mail(ctx(), "", MAIL) is None
    assert limit.rcpt(ctx(sender="x@example.net"), "b@example.org", PARAMS) is None
    assert limit.rcpt(ctx(sender="x@example.net"), "c@example.org", PARAMS).code == 450
    assert limit.mail(ctx(user="alice"), "a1@example.net", MAIL) is None
    assert limit.mail(ctx("192.0.2.9", user="alice"), "a2@example.net", MAIL) is None
    assert limit.mail(ctx(user="alice"), "a3@example.net", MAIL) == Reject(
        450, "4.7.1 Error: too much mail from this user"
    )
    assert limit.mail(ctx(user="bob"), "b1@example.net", MAIL) is None


def test_rate_limit_checks_its_arguments() -> None:
    store = MemoryStore()
    with pytest.raises(ValueError, match="no limit given"):
        RateLimit(store=store)
    with pytest.raises(ValueError, match="per ip only"):
        RateLimit(sender=Limits(connections=5), store=store)
    with pytest.raises(ValueError, match="1 or more"):
        RateLimit(ip=Limits(messages=0), store=store)
    with pytest.raises(ValueError, match="window"):
        RateLimit(ip=Limits(messages=1), window=0, store=store)


def test_rate_limit_stages_without_a_limit_run_inline() -> None:
    pipeline = Pipeline(
        RateLimit(ip=Limits(recipients=5), store=MemoryStore()), deliver=SinkHandler
    )
    assert pipeline.modes["welcome"].value == "inline"
    assert pipeline.modes["mail"].value == "inline"
    assert pipeline.modes["rcpt"].value == "thread"


# ============================================================================ failed logins


def test_auth_limit_closes_after_max_failures_then_cools_down(
    make_store: MakeStore, clock: Clock
) -> None:
    auth = PasswordAuth(
        {"alice": "secret"}, max_failures=3, failure_window=60, cooldown=300,
        store=make_store(clock),
    )  # fmt: skip
    refused = Close(421, "4.7.0 Error: too many failed logins from [192.0.2.7], try later")
    assert auth.auth(ctx(), "alice", "secret") == Accept()  # a success is not counted
    assert auth.auth(ctx(), "alice", "guess1") == Reject()
    assert auth.auth(ctx(), "mallory", "guess2") is None  # unknown user: counted too
    assert auth.auth(ctx(), "alice", "guess3") == refused  # the failure that reaches it
    assert auth.auth(ctx(), "alice", "secret") == refused  # no password is checked now
    assert auth.auth(ctx("192.0.2.8"), "alice", "secret") == Accept()  # another client
    clock.advance(299)
    assert auth.auth(ctx(), "alice", "secret") == refused
    clock.advance(1)
    assert auth.auth(ctx(), "alice", "secret") == Accept()


def test_auth_failures_spread_over_windows_are_forgiven(
    make_store: MakeStore, clock: Clock
) -> None:
    limit = AuthLimit(max_failures=2, window=60, store=make_store(clock))
    assert limit.failed("192.0.2.7") is None
    clock.advance(60)
    assert limit.failed("192.0.2.7") is None  # the first one's window is over
    assert isinstance(limit.failed("192.0.2.7"), Close)


def test_password_auth_is_limited_by_default() -> None:
    auth = PasswordAuth({"alice": "secret"})
    assert auth.limit is not None
    assert (auth.limit.max_failures, auth.limit.window) == (10, 60.0)
    answers = [auth.auth(ctx(), "alice", f"guess{n}") for n in range(11)]
    assert answers[:9] == [Reject()] * 9
    assert all(isinstance(a, Close) and a.code == 421 for a in answers[9:])
    assert PasswordAuth({"alice": "secret"}, max_failures=0).limit is None


# ============================================================================ configuration


def test_toml_tables(tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text("alice:secret\n")
    store = f"sqlite:{tmp_path / 'state.sqlite'}"
    greylist = build_policy(
        {
            "type": "greylist", "store": store, "delay": 120, "auto_allow": 0,
            "retry_window": 7200, "max_age": 86400, "exempt": ["10.0.0.0/8"],
            "ipv4_prefix": 32, "ipv6_prefix": 48,
        }
    )  # fmt: skip
    assert isinstance(greylist, Greylist) and isinstance(greylist.store, SqliteStore)
    assert (greylist.delay, greylist.auto_allow, greylist.retry_window) == (120, 0, 7200)
    assert (greylist.max_age, greylist.ipv4_prefix, greylist.ipv6_prefix) == (86400, 32, 48)
    assert "10.9.9.9" in greylist.exempt
    limit = build_policy(
        {
            "type": "rate-limit", "store": "memory:", "window": 30,
            "ip": {"connections": 10, "messages": 20, "recipients": 30},
            "sender": {"messages": 5}, "user": {"recipients": 100},
        }
    )  # fmt: skip
    assert isinstance(limit, RateLimit) and limit.window == 30
    assert "ip connections<=10" in repr(limit) and "user recipients<=100" in repr(limit)
    auth = build_policy(
        {
            "type": "password-auth", "file": str(users), "max_failures": 5,
            "failure_window": 30, "cooldown": 60, "store": "memory:",
        }
    )  # fmt: skip
    assert isinstance(auth, PasswordAuth) and auth.limit is not None
    assert (auth.limit.max_failures, auth.limit.window, auth.limit.cooldown) == (5, 30, 60)
    off = build_policy({"type": "password-auth", "file": str(users), "max_failures": 0})
    assert isinstance(off, PasswordAuth) and off.limit is None


@pytest.mark.parametrize(
    ("table", "key", "why"),
    [
        ({"type": "greylist", "store": "ftp://x"}, "store", "not a store"),
        ({"type": "greylist", "store": "sqlite:/no/such/dir/x"}, "store", "no such folder"),
        ({"type": "greylist", "store": "memory:", "delay": -1}, "delay", "more than 0"),
        ({"type": "greylist", "store": "memory:", "auto_allow": 1.5}, "auto_allow", "whole"),
        ({"type": "greylist", "store": "memory:", "exempt": ["x"]}, "exempt", "x"),
        ({"type": "greylist", "store": "memory:", "color": 1}, "color", "not a key"),
        ({"type": "rate-limit", "store": "memory:"}, "", "no limit given"),
        ({"type": "rate-limit", "ip": {"mails": 3}}, "ip", "'mails' is not counted"),
        ({"type": "rate-limit", "ip": {"messages": 0}}, "ip", "messages: expected"),
        ({"type": "rate-limit", "ip": 5}, "ip", "expected a table"),
        ({"type": "rate-limit", "user": {"connections": 1}, "store": "memory:"}, "", "per ip"),
        ({"type": "password-auth", "file": "x", "max_failures": -1}, "max_failures", "0 or more"),
    ],
)
def test_toml_mistakes_name_the_key(table: dict[str, Any], key: str, why: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_policy(table)
    assert caught.value.key == key
    assert why in caught.value.why


# ============================================================================== end to end


def auth_plain(client: smtplib.SMTP, user: str, password: str) -> tuple[int, bytes]:
    """One AUTH PLAIN (smtplib's login() would try a second mechanism after a 535)."""
    client.user, client.password = user, password
    try:
        return client.auth("PLAIN", client.auth_plain, initial_response_ok=True)
    except smtplib.SMTPAuthenticationError as exc:
        return exc.smtp_code, exc.smtp_error


def test_greylist_and_rate_limit_through_a_server(
    transport: Transport, make_store: MakeStore, clock: Clock
) -> None:
    """A greylisted recipient gets 451 4.7.1 at RCPT, and goes through once the delay has
    passed; past the message limit, MAIL gets 450 4.7.1; past the connection limit the
    greeting is 421 and the connection is closed."""
    store = make_store(clock)
    calls = Calls()

    class Deliver(Handler):
        blocking = False

        def data(self, message: Any) -> HookResult:
            calls.add("data")
            return Accept()

    pipeline = Pipeline(
        RateLimit(ip=Limits(connections=2, messages=2), window=3600, store=store),
        Greylist(delay=300, store=store),
        deliver=Deliver,
    )
    with transport.serve(pipeline) as server:
        with smtplib.SMTP(server.host, server.port, timeout=WAIT) as client:
            client.ehlo("client.example")
            assert client.mail("a@example.net")[0] == 250
            code, text = client.rcpt("b@example.org")
            assert (code, text[:5]) == (451, b"4.7.1")
            assert b"Greylisted" in text
            client.rset()
        clock.advance(300)
        with smtplib.SMTP(server.host, server.port, timeout=WAIT) as client:
            client.ehlo("client.example")
            assert client.sendmail("a@example.net", ["b@example.org"], MESSAGE) == {}
            with pytest.raises(smtplib.SMTPSenderRefused) as refused:
                client.sendmail("a@example.net", ["b@example.org"], MESSAGE)
            assert refused.value.smtp_code == 450
            assert refused.value.smtp_error.startswith(b"4.7.1 Error: too much mail from")
        calls.wait("data")
        assert len(calls.of("data")) == 1
        with socket.create_connection((server.host, server.port), timeout=WAIT) as sock:
            greeting = sock.recv(4096)
            assert greeting.startswith(b"421 ")  # with our name, as a greeting has it
            assert b" 4.7.0 Error: too many connections from [127.0.0.1]\r\n" in greeting
            assert sock.recv(4096) == b""  # closed


def test_auth_brute_force_is_cut_off_on_every_transport(
    transport: Transport, caplog: pytest.LogCaptureFixture
) -> None:
    """PasswordAuth's default limit: after 10 failed logins from one address (over several
    connections, as the engine closes one after 3), its AUTH gets 421 4.7.0 and the connection
    is closed, even with the right password; another address still logs in."""
    caplog.set_level(logging.WARNING, "smtpkit.policy")
    pipeline = Pipeline(PasswordAuth({"alice": "secret"}), deliver=SinkHandler)
    options = {"config": Config(auth_allow_plaintext=True)}
    with transport.serve(pipeline, **options) as server:
        failures = 0
        while failures < 9:
            with smtplib.SMTP(server.host, server.port, timeout=WAIT) as client:
                client.ehlo("guesser.example")
                for _ in range(min(2, 9 - failures)):
                    assert auth_plain(client, "alice", f"guess{failures}")[0] == 535
                    failures += 1
        refused = (421, b"4.7.0 Error: too many failed logins from [127.0.0.1], try later")
        for password in ("guess10", "secret"):
            with smtplib.SMTP(server.host, server.port, timeout=WAIT) as client:
                client.ehlo("guesser.example")
                assert auth_plain(client, "alice", password) == refused
                with pytest.raises(smtplib.SMTPServerDisconnected):
                    client.noop()  # closed after the 421
        other = ("127.0.0.2", 0)
        with smtplib.SMTP(server.host, server.port, timeout=WAIT, source_address=other) as client:
            client.ehlo("user.example")
            assert auth_plain(client, "alice", "secret")[0] == 235
    assert "auth limit: 10 failed logins" in caplog.text
