"""Pipeline: the stage rules, where each hook runs, and every mistake refused when built."""

from __future__ import annotations

import asyncio
import smtplib
import threading
from collections.abc import Awaitable
from typing import Any, ClassVar

import pytest
from support import WAIT

from smtp_core import Config, MailParams, RcptParams, ServerConnection
from smtpkit.handlers import (
    Accept,
    Close,
    Context,
    Envelope,
    Handler,
    HookResult,
    Message,
    Mode,
    Pipeline,
    Policy,
    PolicyResult,
    PrintHandler,
    Reject,
    Relay,
    RelayHandler,
    Session,
    SinkHandler,
)
from smtpkit.handlers.policies import (
    CidrAllowlist,
    CidrBlocklist,
    Dnsbl,
    PasswordAuth,
    RecipientTable,
    RelayControl,
    RequireTls,
)
from smtpkit.transports import running_server
from smtpkit.transports._pump import plan_for

pytestmark = pytest.mark.timeout(60)
PARAMS = RcptParams()


class Says(Policy):
    """Answers `answer` at rcpt and writes its name in `log` when asked."""

    blocking: ClassVar[bool] = False

    def __init__(self, name: str, answer: PolicyResult, log: list[str]) -> None:
        self.name, self.answer, self.log = name, answer, log

    def rcpt(self, ctx: Context, recipient: str, params: RcptParams) -> PolicyResult:
        self.log.append(self.name)
        return self.answer

    def __repr__(self) -> str:
        return f"Says({self.name!r})"


class Recorder(Handler):
    """A deliverer that writes "deliver" in the log its class is given."""

    blocking: ClassVar[bool] = False
    log: ClassVar[list[str]] = []

    def rcpt(self, recipient: str, params: RcptParams) -> HookResult:
        self.log.append("deliver")
        return Accept("deliverer says ok")


def client(server: Any) -> smtplib.SMTP:
    smtp = smtplib.SMTP(server.host, server.port, timeout=WAIT)
    smtp.ehlo("client.example")
    return smtp


def connection(pipeline: Pipeline, peer: str = "192.0.2.7") -> Handler:
    handler = pipeline()
    conn = ServerConnection(Config(hostname="mx.example"), (peer, 40000))
    handler.bind(Session(conn), Envelope(conn))
    return handler


def rcpt(pipeline: Pipeline) -> Any:
    return connection(pipeline).rcpt("a@example.org", PARAMS)


# ------------------------------------------------------------------------------- stage rules


def test_none_asks_the_next_in_order_then_the_deliverer() -> None:
    log: list[str] = []
    Recorder.log = log
    pipeline = Pipeline(Says("one", None, log), Says("two", None, log), deliver=Recorder)
    assert rcpt(pipeline) == Accept("deliverer says ok")
    assert log == ["one", "two", "deliver"]


@pytest.mark.parametrize("refusal", [Reject(550, "5.1.1 no"), Close(421, "bye")])
def test_reject_or_close_ends_the_stage_and_skips_the_deliverer(refusal: Any) -> None:
    log: list[str] = []
    Recorder.log = log
    pipeline = Pipeline(
        Says("one", None, log), Says("two", refusal, log), Says("three", None, log),
        deliver=Recorder,
    )  # fmt: skip
    assert rcpt(pipeline) is refusal
    assert log == ["one", "two"]


def test_accept_skips_the_rest_of_the_stage_but_not_the_deliverer() -> None:
    log: list[str] = []
    Recorder.log = log
    pipeline = Pipeline(Says("one", Accept(), log), Says("two", Reject(), log), deliver=Recorder)
    assert rcpt(pipeline) == Accept("deliverer says ok")
    assert log == ["one", "deliver"]


def test_accept_only_skips_its_own_stage() -> None:
    log: list[str] = []

    class Both(Policy):
        blocking: ClassVar[bool] = False

        def welcome(self, ctx: Context, client_ip: str) -> PolicyResult:
            log.append("welcome")
            return Accept()

        def rcpt(self, ctx: Context, recipient: str, params: RcptParams) -> PolicyResult:
            log.append("rcpt")
            return None

    pipeline = Pipeline(CidrAllowlist(["192.0.2.0/24"]), Both(), deliver=SinkHandler)
    handler = connection(pipeline)
    assert handler.welcome("192.0.2.7") == Accept()
    assert log == []  # the allowlist's Accept skipped the rest of welcome
    assert handler.rcpt("a@example.org", PARAMS) == Accept()
    assert log == ["rcpt"]  # but not of rcpt


def test_without_a_deliverer_hook_the_stage_default_answers() -> None:
    pipeline = Pipeline(Says("one", None, []), deliver=SinkHandler)
    handler = connection(pipeline)
    assert handler.rcpt("a@example.org", PARAMS) == Accept()
    assert handler.auth("user", "password") == Reject()  # auth: refused unless accepted
    text = Pipeline(Says("one", Accept("policy ok"), []), deliver=SinkHandler)
    assert rcpt(text) == Accept("policy ok")


def test_a_policy_answering_nonsense_is_an_error() -> None:
    pipeline = Pipeline(Says("odd", "yes", []), deliver=SinkHandler)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="returned 'yes'"):
        rcpt(pipeline)


def test_edits_run_after_the_checks_even_after_an_accept() -> None:
    log: list[str] = []

    class Check(Policy):
        blocking: ClassVar[bool] = False

        def data(self, ctx: Context, message: Message) -> PolicyResult:
            log.append("check")
            return Accept()

    class Tag(Policy):
        blocking: ClassVar[bool] = False

        def data(self, ctx: Context, message: Message) -> PolicyResult:
            log.append("skipped check")
            return None

        def edit(self, ctx: Context, message: Message) -> None:
            log.append("edit")
            message.add_header("X-Checked", "yes")

    class Deliver(Handler):
        blocking: ClassVar[bool] = False

        def data(self, message: Message) -> HookResult:
            log.append("deliver")
            assert b"X-Checked: yes\r\n" in bytes(message)
            return Accept()

    pipeline = Pipeline(Check(), Tag(), deliver=Deliver)
    message = Message(b"Subject: hi\r\n\r\nbody\r\n")
    assert connection(pipeline).data(message) == Accept()
    assert log == ["check", "edit", "deliver"]
    log.clear()
    refused = Pipeline(Says("no", None, []), deliver=Deliver)
    assert connection(refused).data(message) == Accept()


def test_per_connection_state_is_per_connection() -> None:
    class Count(Policy):
        blocking: ClassVar[bool] = False

        def rcpt(self, ctx: Context, recipient: str, params: RcptParams) -> PolicyResult:
            ctx.state[self] = ctx.state.get(self, 0) + 1
            return Reject(452, "4.5.3 one is enough") if ctx.state[self] > 1 else None

    pipeline = Pipeline(Count(), deliver=SinkHandler)
    first, second = connection(pipeline), connection(pipeline)
    assert first.rcpt("a@example.org", PARAMS) == Accept()
    assert first.rcpt("b@example.org", PARAMS).code == 452  # type: ignore[union-attr]
    assert second.rcpt("a@example.org", PARAMS) == Accept()


# ------------------------------------------------------------------------------- where hooks run


class AsyncCheck(Policy):
    async def mail(self, ctx: Context, sender: str, params: MailParams) -> PolicyResult:
        await asyncio.sleep(0)
        return Reject(550, "5.7.1 async says no") if sender.startswith("bad") else None


def test_each_stage_runs_where_its_parts_must() -> None:
    pipeline = Pipeline(
        CidrBlocklist(["10.0.0.0/8"]),  # inline
        PasswordAuth({"alice": "secret"}),  # blocking: the pool
        AsyncCheck(),  # async: the loop
        RecipientTable(["bob@example.org"]),  # inline
        deliver=PrintHandler,  # non-blocking data
    )
    modes = pipeline.modes
    assert modes["welcome"] is Mode.INLINE
    assert modes["ehlo"] is Mode.DEFAULT
    assert modes["auth"] is Mode.THREAD
    assert modes["mail"] is Mode.ASYNC
    assert modes["rcpt"] is Mode.INLINE
    assert modes["data"] is Mode.INLINE
    assert modes["reset"] is Mode.DEFAULT
    plan = plan_for(pipeline())
    assert dict(plan.modes) == dict(modes)
    assert plan.offers_auth


def test_a_blocking_deliverer_puts_its_stage_on_the_pool() -> None:
    pipeline = Pipeline(RelayControl(domains=["example.org"]), deliver=Relay("127.0.0.1", 9))
    assert pipeline.modes["rcpt"] is Mode.THREAD  # the relay's rcpt blocks
    assert pipeline.modes["welcome"] is Mode.DEFAULT


def test_hooks_run_on_the_loop_and_on_the_pool_for_real() -> None:
    seen: dict[str, str] = {}
    loop_thread = threading.Event()

    class Where(Policy):
        async def mail(self, ctx: Context, sender: str, params: MailParams) -> PolicyResult:
            asyncio.get_running_loop()  # raises off the loop
            seen["mail"] = threading.current_thread().name
            loop_thread.set()
            return None

        def rcpt(self, ctx: Context, recipient: str, params: RcptParams) -> PolicyResult:
            seen["rcpt"] = threading.current_thread().name
            return None

    with running_server(Pipeline(Where(), deliver=SinkHandler)) as server, client(server) as smtp:
        assert smtp.mail("a@example.org")[0] == 250
        assert smtp.rcpt("b@example.org")[0] == 250
    assert loop_thread.is_set()
    assert seen["mail"] != seen["rcpt"]  # the loop's thread, then a worker


def test_an_async_stage_refuses_through_the_server() -> None:
    with (
        running_server(Pipeline(AsyncCheck(), deliver=SinkHandler)) as server,
        client(server) as smtp,
    ):
        assert smtp.mail("bad@example.org") == (550, b"5.7.1 async says no")
        assert smtp.mail("good@example.org")[0] == 250


# ------------------------------------------------------------------------------- build errors


def test_a_policy_in_the_deliverers_place() -> None:
    with pytest.raises(TypeError, match="is a policy: list it before deliver="):
        Pipeline(deliver=CidrBlocklist(["10.0.0.0/8"]))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="is a policy"):
        Pipeline(deliver=CidrBlocklist)  # type: ignore[arg-type]


def test_a_handler_among_the_policies() -> None:
    with pytest.raises(TypeError, match="a Handler goes in deliver="):
        Pipeline(SinkHandler, deliver=SinkHandler)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="build it"):
        Pipeline(CidrBlocklist, deliver=SinkHandler)  # type: ignore[arg-type]


def test_a_handler_instance_or_a_pipeline_as_deliverer() -> None:
    with pytest.raises(TypeError, match="give its class or a factory"):
        Pipeline(deliver=SinkHandler())  # type: ignore[arg-type]
    inner = Pipeline(deliver=SinkHandler)
    with pytest.raises(TypeError, match="is a Pipeline"):
        Pipeline(deliver=inner)


def test_a_policy_that_checks_nothing_is_unreachable() -> None:
    class Misspelled(Policy):
        def recipient(self, ctx: Context, recipient: str) -> PolicyResult:
            return Reject()

    with pytest.raises(TypeError, match=r"checks nothing.*can never be reached"):
        Pipeline(Misspelled(), deliver=SinkHandler)


def test_a_check_after_one_that_answers_every_call_is_unreachable() -> None:
    class Final(Policy):
        answers_every: ClassVar[frozenset[str]] = frozenset({"rcpt"})

        def rcpt(self, ctx: Context, recipient: str, params: RcptParams) -> PolicyResult:
            return Reject()

    table = RecipientTable(["bob@example.org"])
    with pytest.raises(TypeError, match=r"rcpt\(\) can never be reached: .*Final"):
        Pipeline(Final(), table, deliver=SinkHandler)
    Pipeline(table, Final(), deliver=SinkHandler)  # last is fine


def test_a_blocking_policy_in_front_of_an_async_path() -> None:
    class AsyncDeliverer(Handler):
        async def welcome(self, client_ip: str) -> HookResult:
            return Accept()

    with pytest.raises(TypeError, match=r"Dnsbl.welcome\(\) may block.*AsyncDeliverer"):
        Pipeline(Dnsbl("zen.example"), deliver=AsyncDeliverer)


def test_delivering_onward_without_relay_control_names_the_fix() -> None:
    for deliver in (RelayHandler, Relay("127.0.0.1", 25), Relay("127.0.0.1", 24, lmtp=True)):
        with pytest.raises(ValueError) as raised:
            Pipeline(CidrBlocklist(["10.0.0.0/8"]), deliver=deliver)  # type: ignore[arg-type]
        message = str(raised.value)
        assert "\n" not in message
        assert "add RelayControl(networks=[...], domains=[...])" in message
        assert "open_relay=True" in message
    Pipeline(deliver=Relay("127.0.0.1", 25), open_relay=True)
    Pipeline(RelayControl(networks=["10.0.0.0/8"]), deliver=Relay("127.0.0.1", 25))
    Pipeline(deliver=SinkHandler)  # keeps the mail: no relay control needed


def test_an_accept_at_rcpt_before_relay_control_is_refused() -> None:
    class Welcoming(Policy):
        def rcpt(self, ctx: Context, recipient: str, params: RcptParams) -> PolicyResult:
            return Accept()

    class Trusted(Welcoming):
        authorises_relay: ClassVar[bool] = True

    control = RelayControl(networks=["10.0.0.0/8"])
    with pytest.raises(ValueError, match="would skip relay control: move it after"):
        Pipeline(Welcoming(), control, deliver=Relay("127.0.0.1", 25))
    Pipeline(control, Welcoming(), deliver=Relay("127.0.0.1", 25))
    Pipeline(Trusted(), control, deliver=Relay("127.0.0.1", 25))
    # Policies that never Accept at RCPT may come first.
    Pipeline(RecipientTable(["bob@example.org"]), control, deliver=Relay("127.0.0.1", 25))


def test_relay_options_are_checked_when_built() -> None:
    with pytest.raises(ValueError, match="starttls"):
        Relay("127.0.0.1", 25, starttls="sometimes")


def test_the_threads_transport_refuses_an_async_pipeline() -> None:
    pipeline = Pipeline(AsyncCheck(), deliver=SinkHandler)
    refused = pytest.raises(ValueError, match=r"cannot run async hooks.*mail")
    with refused, running_server(pipeline, transport="threads"):
        pass


def test_an_async_deliverer_hook_is_awaited() -> None:
    class AsyncSink(Handler):
        async def rcpt(self, recipient: str, params: RcptParams) -> HookResult:
            await asyncio.sleep(0)
            return Accept("awaited")

    pipeline = Pipeline(RecipientTable(["bob@example.org"]), deliver=AsyncSink)
    assert pipeline.modes["rcpt"] is Mode.ASYNC
    handler = connection(pipeline)
    outcome = handler.rcpt("bob@example.org", PARAMS)
    assert isinstance(outcome, Awaitable)
    assert asyncio.run(_await(outcome)) == Accept("awaited")
    refused = handler.rcpt("eve@example.org", PARAMS)
    assert asyncio.run(_await(refused)).code == 550


async def _await(outcome: Any) -> Any:
    return await outcome


def test_each_listener_its_own_pipeline(tls: Any) -> None:
    """An MX that must not require TLS (RFC 3207 section 4) and a submission port that does,
    side by side in one process: one Server per policy list."""
    mx = Pipeline(RelayControl(domains=["example.org"]), deliver=SinkHandler)
    submission = Pipeline(RequireTls(), RelayControl(), deliver=SinkHandler)
    with (
        running_server(mx, ssl_context=tls.server) as port25,
        running_server(submission, ssl_context=tls.server) as port587,
    ):
        with smtplib.SMTP(port25.host, port25.port, timeout=WAIT) as smtp:
            smtp.ehlo("client.example")
            assert smtp.mail("a@elsewhere.example")[0] == 250  # no TLS needed
            assert smtp.rcpt("b@example.org")[0] == 250
        with smtplib.SMTP(port587.host, port587.port, timeout=WAIT) as smtp:
            smtp.ehlo("client.example")
            assert smtp.mail("a@example.org")[0] == 530
            smtp.starttls(context=tls.client)
            smtp.ehlo("client.example")
            assert smtp.mail("a@example.org")[0] == 250
