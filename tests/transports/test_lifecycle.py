"""The shared lifecycle, without sockets: admission, deadlines, stress, shutdown, the pump's
hook timeouts and the worker pool's bound. The clock is a counter the test moves."""

from __future__ import annotations

import threading

import pytest
from support import WAIT, wait_until

from smtp_core import Config, ServerConnection
from smtpkit.handlers import Accept, Handler
from smtpkit.transports import Deadline, Expiry, Lifecycle, Phase, Refusal, ServerOptions
from smtpkit.transports._lifecycle import SessionClock, Slot
from smtpkit.transports._pump import CLOSE, NEED_DATA, HookCall, Pump
from smtpkit.transports._workers import WorkerPool


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lifecycle(**options: object) -> tuple[Lifecycle, Clock]:
    clock = Clock()
    return Lifecycle(ServerOptions(**options), clock), clock  # type: ignore[arg-type]


# ---------------------------------------------------------------------- admission


def test_slots_are_counted_and_released_once() -> None:
    lc, _ = lifecycle(max_connections=2, max_per_ip=1)
    a = lc.admit("192.0.2.1")
    assert isinstance(a, Slot)
    assert lc.admit("192.0.2.1") is Refusal.TOO_MANY_FROM_IP
    b = lc.admit("192.0.2.2")
    assert isinstance(b, Slot)
    assert lc.admit("127.0.0.1") is Refusal.TOO_MANY
    lc.release(a)
    lc.release(a)  # a connection failing on two paths frees one slot, not two
    lc.release(None)
    assert lc.active_sessions == 1
    assert isinstance(lc.admit("192.0.2.3"), Slot)


def test_no_admission_once_shutdown_began() -> None:
    lc, _ = lifecycle()
    lc.begin_shutdown()
    assert lc.admit("127.0.0.1") is Refusal.SHUTTING_DOWN


# ---------------------------------------------------------------------- deadlines


def session(lc: Lifecycle) -> SessionClock:
    return SessionClock(lc)


def test_a_command_line_must_end_within_timeout_of_its_first_byte() -> None:
    lc, clock = lifecycle(timeout=300)
    s = session(lc)
    s.waiting(content=False)
    assert s.deadline() == Deadline(1300.0, Expiry.TIMEOUT)  # idle since the wait began
    clock.now = 1100.0
    s.received(b"NO")  # the first byte of a line
    for step in range(1, 200):  # one byte every second never moves it
        clock.now = 1100.0 + step
        s.received(b"O")
        s.waiting(content=False)
        assert s.deadline().at == 1400.0
    clock.now = 1350.0
    s.received(b"P\r\n")  # complete: the next wait starts afresh
    s.waiting(content=False)
    assert s.deadline().at == 1650.0


def test_pipelined_tail_starts_a_new_record() -> None:
    lc, clock = lifecycle(timeout=300)
    s = session(lc)
    clock.now = 1010.0
    s.received(b"NOOP\r\nNO")
    s.waiting(content=False)
    assert s.deadline().at == 1310.0


def test_hook_time_does_not_count_against_a_pending_line() -> None:
    lc, clock = lifecycle(timeout=300, hook_timeout=60)
    s = session(lc)
    s.received(b"MAIL FROM:<a@b>\r\nRC")
    s.hook_started()
    assert s.deadline() == Deadline(1060.0, Expiry.HOOK)
    clock.now = 1050.0
    s.hook_ended()
    s.waiting(content=False)
    assert s.deadline().at == 1350.0


def test_content_deadline_grows_with_the_minimum_rate() -> None:
    lc, clock = lifecycle(
        timeout=300,
        data_timeout=600,
        min_data_rate=500,
        config=Config(max_message_size=209_715_200),  # a 100 MB message is within the limit
    )
    s = session(lc)
    s.waiting(content=True)  # content starts at 1000
    assert s.deadline().at == 1300.0  # no byte yet: a pause may not exceed timeout
    for second in range(1, 2001):  # 100 MB over 2000 s: 50 kB/s, far above the rate
        clock.now = 1000.0 + second
        s.received(b"x" * 50_000)
        s.waiting(content=True)
        assert s.deadline().at > clock.now
    # 600 s head start + 100 MB / 500 B/s, capped by the pause limit
    assert s.deadline().at == min(1000 + 600 + 100_000_000 / 500, clock.now + 300)


def test_a_trickle_below_the_rate_is_cut_after_its_head_start() -> None:
    lc, clock = lifecycle(timeout=300, data_timeout=600, min_data_rate=500)
    s = session(lc)
    s.waiting(content=True)
    second = 0
    while s.deadline().at > clock.now:
        second += 1
        clock.now = 1000.0 + second
        s.received(b"x")  # 1 byte/s
        s.waiting(content=True)
    assert 600 < second < 603  # 600 s + one second per 500 bytes


def test_rate_zero_caps_the_whole_message() -> None:
    lc, clock = lifecycle(timeout=300, data_timeout=600, min_data_rate=0)
    s = session(lc)
    s.waiting(content=True)
    clock.now = 1599.0
    s.received(b"x" * 10**9)
    assert s.deadline().at == 1600.0


def test_output_backing_up_is_cut_after_timeout_whatever_the_peer_reads() -> None:
    lc, clock = lifecycle(timeout=300)
    s = session(lc)
    clock.now = 1010.0
    s.output_blocked()
    clock.now = 1200.0
    s.received(b"NOOP\r\n")  # it still sends (its wait starts afresh)
    s.output_blocked()  # still blocked (it read a little): the deadline does not move
    s.waiting(content=False)
    assert s.deadline() == Deadline(1310.0, Expiry.UNREAD)
    s.output_drained()
    assert s.deadline().expiry is Expiry.TIMEOUT


def test_stress_shrinks_running_deadlines_but_not_hooks() -> None:
    lc, clock = lifecycle(max_connections=10, timeout=300, stress_timeout=10, hook_timeout=60)
    idle = session(lc)
    idle.waiting(content=False)
    hook = session(lc)
    hook.hook_started()
    assert idle.deadline().at == 1300.0
    epoch = lc.stress_epoch
    clock.now = 1001.0
    slots = [lc.admit("127.0.0.1") for _ in range(8)]
    assert not lc.stress  # 8 of 10: not more than 80%
    slots.append(lc.admit("127.0.0.1"))
    assert lc.stress and lc.stress_epoch == epoch + 1
    assert idle.deadline().at == 1010.0  # the running deadline shrank
    assert hook.deadline().at == 1060.0
    clock.now = 1002.0
    for slot in slots:
        assert isinstance(slot, Slot)
        lc.release(slot)
    assert not lc.stress
    # Stress is over, but the wait it cut keeps its cut: else the first attackers cut off
    # would hand the others their long deadlines back. A wait that begins now is not cut.
    assert idle.deadline().at == 1010.0
    clock.now = 1003.0
    later = session(lc)
    later.waiting(content=False)
    assert later.deadline().at == 1303.0


def test_stress_that_came_and_went_still_cuts_the_waits_it_saw() -> None:
    # Every peer deadline, not only the idle one: a line begun, content, unread output.
    lc, clock = lifecycle(
        max_connections=5, timeout=300, data_timeout=600, min_data_rate=0, stress_timeout=10
    )
    line, content, unread = session(lc), session(lc), session(lc)
    line.received(b"NO")
    content.waiting(content=True)
    unread.received(b"NOOP\r\n")
    unread.output_blocked()  # and it reads no reply
    clock.now = 1001.0
    slots = [lc.admit("127.0.0.1") for _ in range(5)]
    assert lc.stress
    clock.now = 1002.0
    lc.release(slots[0])
    assert not lc.stress
    assert line.deadline().at == 1010.0
    assert content.deadline().at == 1010.0
    assert unread.deadline() == Deadline(1010.0, Expiry.UNREAD)


def test_content_past_the_size_limit_earns_no_time() -> None:
    # A fast DATA that never ends: past max_message_size the engine discards the bytes, and
    # they buy nothing. The deadline stops at data_timeout + max_message_size / rate, however
    # fast and long the content goes on.
    size = 10_000
    lc, clock = lifecycle(
        timeout=300, data_timeout=60, min_data_rate=500, config=Config(max_message_size=size)
    )
    s = session(lc)
    s.waiting(content=True)
    cap = 1000 + 60 + size / 500
    for second in range(1, 1000):
        clock.now = 1000.0 + second
        s.received(b"x" * 1000)  # twice the rate, whole lines or not
        s.waiting(content=True)
        assert s.deadline().at == min(1060 + min(second * 1000, size) / 500, cap)
        if s.deadline().at <= clock.now:
            break
    assert clock.now == cap  # cut off then, not later


def test_content_past_the_size_limit_must_end_within_timeout() -> None:
    # A fast sender banks a large head start before it passes the size limit; after that, the
    # rest must arrive within `timeout` of the crossing, not when the banked time runs out.
    size = 1_000_000
    lc, clock = lifecycle(
        timeout=300, data_timeout=60, min_data_rate=500, config=Config(max_message_size=size)
    )
    s = session(lc)
    s.waiting(content=True)
    for second in range(1, 10_000):
        clock.now = 1000.0 + second
        s.received(b"x" * 100_000)  # crosses the limit in second 11
        s.waiting(content=True)
        if s.deadline().at <= clock.now:
            break
    assert clock.now == 1011 + 300  # not 1000 + 60 + size / 500 = 3060


def test_content_past_the_size_limit_is_cut_sooner_under_stress() -> None:
    size = 1_000_000
    lc, clock = lifecycle(
        timeout=300,
        data_timeout=60,
        min_data_rate=500,
        stress_timeout=10,
        max_connections=10,
        config=Config(max_message_size=size),
    )
    attackers = [lc.admit(f"192.0.2.{n}") for n in range(9)]
    assert lc.stress
    s = session(lc)
    s.waiting(content=True)
    clock.now = 1001.0
    s.received(b"x" * (size + 1))
    s.waiting(content=True)
    assert s.deadline().at == 1001 + 10
    assert all(isinstance(a, Slot) for a in attackers)


# ---------------------------------------------------------------------- shutdown


def test_shutdown_phases() -> None:
    lc, clock = lifecycle(grace_period=30)
    assert lc.advance(5) is Phase.SERVING
    lc.begin_shutdown()
    assert lc.advance(5) is Phase.DRAINING
    clock.now += 30
    assert lc.advance(5) is Phase.CUTTING_OFF
    clock.now += 0.5
    assert lc.advance(1) is Phase.CUTTING_OFF
    clock.now += 0.5
    assert lc.advance(1) is Phase.STOPPED


def test_shutdown_ends_when_the_last_session_does() -> None:
    lc, _ = lifecycle(grace_period=30)
    lc.begin_shutdown()
    assert lc.advance(0) is Phase.STOPPED


# ---------------------------------------------------------------------- the pump's hooks


class Blocking(Handler):
    def mail(self, sender: str, params: object) -> Accept:  # type: ignore[override]
        return Accept()


def start(lc: Lifecycle, handler: Handler) -> Pump:
    conn = ServerConnection(Config(), ("192.0.2.9", 1234))
    pump = Pump(conn, handler, lifecycle=lc)
    assert pump.next_action() is NEED_DATA
    assert pump.data_to_send().startswith(b"220")
    return pump


def test_a_hook_past_its_deadline_gets_451_and_the_session_goes_on() -> None:
    lc, clock = lifecycle(hook_timeout=60)
    pump = start(lc, Blocking())
    pump.receive_data(b"EHLO x\r\nMAIL FROM:<a@b.example>\r\n")
    call = pump.next_action()
    assert isinstance(call, HookCall) and call.name == "mail"
    assert pump.deadline() == Deadline(1060.0, Expiry.HOOK)
    clock.now = 1060.0
    pump.hook_timed_out(call)
    assert pump.next_action() is NEED_DATA
    assert pump.data_to_send().splitlines()[-1] == b"451 4.3.0 Error: internal server error"
    pump.hook_done(Accept(), call)  # the late result is dropped
    pump.receive_data(b"QUIT\r\n")
    assert pump.next_action() is CLOSE


class Exiting(Handler):
    blocking = False

    def welcome(self, client_ip: str) -> Accept:
        raise SystemExit(3)


def test_a_hook_raising_base_exception_is_the_hooks_failure() -> None:
    lc, _ = lifecycle()
    conn = ServerConnection(Config(), ("192.0.2.9", 1234))
    pump = Pump(conn, Exiting(), lifecycle=lc)
    assert pump.next_action() is CLOSE
    assert pump.data_to_send() == b"421 Error: internal server error\r\n"


class Bound(Handler):
    seen: list[object]

    def bind(self, session: object, envelope: object) -> None:  # type: ignore[override]
        super().bind(session, envelope)  # type: ignore[arg-type]
        self.seen = [session, envelope]


def test_the_handler_is_bound_to_its_session_and_envelope() -> None:
    lc, _ = lifecycle()
    handler = Bound()
    pump = start(lc, handler)
    assert handler.seen == [pump.session, pump.envelope]
    assert handler.session is pump.session and handler.envelope is pump.envelope


# ---------------------------------------------------------------------- the worker pool


def test_the_pool_replaces_stuck_workers_up_to_a_bound() -> None:
    pool = WorkerPool(2)
    release = threading.Event()
    started = threading.Semaphore(0)
    results: list[object] = []

    def stuck() -> str:
        started.release()
        release.wait()
        return "late"

    jobs = [pool.submit(stuck, (), lambda ok, v: results.append(v)) for _ in range(2)]
    for _ in range(2):
        assert started.acquire(timeout=WAIT)
    for job in jobs:
        assert job is not None
        pool.abandon(job)
    assert pool.abandoned == 2
    # Past `workers` abandoned threads, hooks are refused at once.
    assert pool.submit(stuck, (), lambda ok, v: None) is None
    release.set()
    assert wait_until(lambda: pool.abandoned == 0)
    assert results == []  # abandoned results are dropped
    got = threading.Event()
    assert pool.submit(lambda: 1, (), lambda ok, v: got.set()) is not None
    assert got.wait(WAIT)
    pool.shutdown()


def test_pool_threads_are_daemons() -> None:
    pool = WorkerPool(1)
    names: list[bool] = []
    done = threading.Event()
    pool.submit(
        lambda: names.append(threading.current_thread().daemon), (), lambda ok, v: done.set()
    )
    assert done.wait(WAIT)
    assert names == [True]
    pool.shutdown()


@pytest.mark.parametrize("exc", [SystemExit(1), KeyboardInterrupt(), BaseException("x")])
def test_pool_reports_base_exceptions(exc: BaseException) -> None:
    pool = WorkerPool(1)
    got: list[tuple[bool, object]] = []
    done = threading.Event()

    def boom() -> None:
        raise exc

    pool.submit(boom, (), lambda ok, v: (got.append((ok, v)), done.set()))
    assert done.wait(WAIT)
    assert got == [(False, exc)]
    pool.shutdown()
