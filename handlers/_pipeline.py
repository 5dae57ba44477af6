"""Policies as an explicit, ordered pipeline, after Postfix's restriction lists.

    gateway = Pipeline(
        CidrBlocklist.load("/etc/smtpkit/blocked"),
        Dnsbl("zen.spamhaus.org"),
        PasswordAuth.load("/etc/smtpkit/users"),
        RelayControl(networks=["10.0.0.0/8"], domains=["example.org"]),
        deliver=Relay("mx.internal.example.org", 25),
    )
    serve(gateway)

Each hook of the session is a stage. The policies that check it are asked in order; each
answers Reject or Close (the stage ends: that is the reply), Accept (Postfix's OK: the rest of
the policies of this stage are skipped) or None (DUNNO: ask the next). Unless a policy refused,
the deliverer's own hook answers last. At the end of data, the policies that change the
message (`edit`) run after the decision chain, whatever it accepted.

Everything that can be wrong with the composition is a TypeError or ValueError when the
pipeline is built, never a surprise in production.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final, final

from smtp_core import Accept, Close, Decision, MailParams, RcptParams, Reject, Reply

from ._handler import HOOKS, PLANNED_HOOKS, Handler, HandlerFactory, HookResult, Mode, modes_of

if TYPE_CHECKING:
    from ._message import Message
    from ._session import Envelope, Session

__all__ = ["Context", "Pipeline", "Policy", "PolicyResult", "handler_class_of"]

#: What a policy hook answers: a decision, or None to ask the next policy.
PolicyResult = Decision | Reply | None

#: The stages a policy may check, in session order, and `edit`, which changes the message.
STAGES: Final = HOOKS
EDIT: Final = "edit"

#: What a stage answers when no policy decided and the deliverer does not have the hook.
_DEFAULTS: Final[Mapping[str, HookResult]] = {
    name: Reject() if name == "auth" else Accept() for name in HOOKS
}


@final
class Context:
    """What a policy hook knows of its connection: the session (peer, HELO name, TLS, user),
    the current transaction, and `state`, a dict of its own for per-connection facts (key it
    by the policy, `ctx.state[self]`, so that two policies never clash)."""

    __slots__ = ("envelope", "session", "state")

    session: Session
    envelope: Envelope

    def __init__(self) -> None:
        self.state: dict[object, Any] = {}

    def __repr__(self) -> str:
        return f"<Context {getattr(self, 'session', None)!r}>"


class Policy:
    """A check, built once with its configuration and shared by every connection.

    Override the hooks it checks; each gets the connection's `Context` first, then the hook's
    arguments, and answers Reject, Close, Accept or None (see the module docstring). `edit`
    changes the message at the end of data instead, after every check. A plain `def` runs on
    the worker pool (it may block) unless the class says `blocking = False`; an `async def`
    runs on the event loop.
    """

    #: False promises that no plain hook of this policy blocks: they then run inline.
    blocking: ClassVar[bool] = True
    #: This policy is relay control: a pipeline that delivers onward needs one.
    controls_relay: ClassVar[bool] = False
    #: This policy only Accepts at RCPT clients that may relay (trusted networks,
    #: authenticated users), so it may stand before relay control.
    authorises_relay: ClassVar[bool] = False
    #: The stages at which this policy may answer Accept; None: every stage it checks.
    accepts: ClassVar[frozenset[str] | None] = None
    #: The stages at which this policy always answers (never None): whatever comes after it
    #: in such a stage could never be reached.
    answers_every: ClassVar[frozenset[str]] = frozenset()
    #: This policy's `edit` signs the message (DKIM): it runs after every other edit, so that
    #: the signature covers the headers they add.
    signs: ClassVar[bool] = False

    def welcome(self, ctx: Context, client_ip: str) -> PolicyResult | Awaitable[PolicyResult]:
        return None

    def ehlo(self, ctx: Context, hostname: str) -> PolicyResult | Awaitable[PolicyResult]:
        return None

    def auth(
        self, ctx: Context, user: str, password: str
    ) -> PolicyResult | Awaitable[PolicyResult]:
        return None

    def mail(
        self, ctx: Context, sender: str, params: MailParams
    ) -> PolicyResult | Awaitable[PolicyResult]:
        return None

    def rcpt(
        self, ctx: Context, recipient: str, params: RcptParams
    ) -> PolicyResult | Awaitable[PolicyResult]:
        return None

    def data(self, ctx: Context, message: Message) -> PolicyResult | Awaitable[PolicyResult]:
        return None

    def edit(self, ctx: Context, message: Message) -> Awaitable[None] | None:
        """Change the message (`message.add_header()`, `remove_header()`); runs after every
        check of data, whatever they answered, and before the deliverer."""
        return None

    def checks(self) -> tuple[str, ...]:
        """The stages (and `edit`) this policy overrides."""
        return tuple(
            name
            for name in (*STAGES, EDIT)
            if getattr(type(self), name) is not getattr(Policy, name)
        )

    def mode(self, name: str) -> Mode:
        """Where this policy's hook `name` runs."""
        fn = getattr(type(self), name)
        if fn is getattr(Policy, name):
            return Mode.DEFAULT
        if inspect.iscoroutinefunction(fn):
            return Mode.ASYNC
        return Mode.THREAD if self.blocking else Mode.INLINE

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


@final
@dataclass(frozen=True, slots=True)
class _Stage:
    """One hook of the session: its checks, its edits and the deliverer's turn."""

    name: str
    mode: Mode
    #: The policies' bound hooks, in order.
    checks: tuple[Callable[..., PolicyResult | Awaitable[PolicyResult]], ...]
    edits: tuple[Callable[..., Awaitable[None] | None], ...]
    #: The deliverer has this hook.
    delivers: bool


def handler_class_of(deliver: object) -> type[Handler]:
    """The Handler class a deliverer (a handler factory) makes, found without making one when
    it can be; TypeError for what cannot deliver (a policy, a Handler instance, a Pipeline)."""
    if isinstance(deliver, Pipeline):
        raise TypeError(f"deliver={deliver!r} is a Pipeline: list its policies in this one instead")
    if isinstance(deliver, type):
        if issubclass(deliver, Handler):
            return deliver
        if issubclass(deliver, Policy):
            raise TypeError(
                f"deliver={deliver.__name__} is a policy: list it before deliver=, "
                "which takes the Handler that delivers"
            )
        raise TypeError(f"deliver={deliver.__name__} is not a Handler subclass")
    if isinstance(deliver, Policy):
        raise TypeError(
            f"deliver={deliver!r} is a policy: list it before deliver=, "
            "which takes the Handler that delivers"
        )
    if isinstance(deliver, Handler):
        raise TypeError(
            f"deliver= got a {type(deliver).__name__} instance: give its class or a factory "
            "(each connection gets its own handler)"
        )
    if not callable(deliver):
        raise TypeError(f"deliver={deliver!r} is neither a Handler class nor a factory")
    made = getattr(deliver, "handler_class", None)  # a Relay(...), say
    if isinstance(made, type) and issubclass(made, Handler):
        return made
    inner = getattr(deliver, "func", None)  # functools.partial
    if isinstance(inner, type) and issubclass(inner, Handler):
        return inner
    handler = deliver()
    if not isinstance(handler, Handler):
        raise TypeError(f"deliver={deliver!r} made {type(handler).__name__}, not a Handler")
    return type(handler)


def _combine(name: str, parts: Iterable[tuple[str, Mode]]) -> Mode:
    """Where a stage runs, from where its parts run: on the loop if one is async, on the pool
    if one may block; refused if both, as the loop must never block."""
    parts = [(who, mode) for who, mode in parts if mode is not Mode.DEFAULT]
    modes = {mode for _, mode in parts}
    if Mode.ASYNC in modes and Mode.THREAD in modes:
        blocking = next(who for who, mode in parts if mode is Mode.THREAD)
        asynchronous = next(who for who, mode in parts if mode is Mode.ASYNC)
        raise TypeError(
            f"{blocking}.{name}() may block (a plain def), but {asynchronous}.{name}() is "
            f"async, so the {name} stage runs on the event loop, where it must not block: "
            "make the async one plain, or the blocking one async"
        )
    for mode in (Mode.ASYNC, Mode.THREAD, Mode.INLINE):
        if mode in modes:
            return mode
    return Mode.DEFAULT


class Pipeline:
    """Policies in order, then the deliverer: a handler factory for `Server` and `serve()`.

    `deliver` is a Handler class or factory (one handler per connection): SinkHandler,
    PrintHandler, a MaildirHandler, a `Relay(...)`, or your own. A deliverer that sends mail
    onward (`Handler.delivers_onward`, as a relay) needs a relay-control policy, unless
    `open_relay=True` says that relaying for anyone is what you want.
    """

    def __init__(
        self, *policies: Policy, deliver: HandlerFactory, open_relay: bool = False
    ) -> None:
        for policy in policies:
            if not isinstance(policy, Policy):
                what = policy.__name__ if isinstance(policy, type) else repr(policy)
                hint = (
                    " (a Handler goes in deliver=)"
                    if isinstance(policy, Handler)
                    or (isinstance(policy, type) and issubclass(policy, Handler))
                    else " (build it: a policy is an instance, made once)"
                    if isinstance(policy, type) and issubclass(policy, Policy)
                    else ""
                )
                raise TypeError(f"Pipeline takes policies; {what} is not one{hint}")
        self.policies: tuple[Policy, ...] = policies
        self.deliver = deliver
        self.open_relay = open_relay
        self.deliverer_class = cls = handler_class_of(deliver)
        self._check_reachable()
        self._check_relay(cls)
        deliverer_modes = modes_of(cls)
        stages: dict[str, _Stage] = {}
        modes: dict[str, Mode] = {}
        for name in STAGES:
            checking = [p for p in policies if p.mode(name) is not Mode.DEFAULT]
            editing = [p for p in policies if name == "data" and p.mode(EDIT) is not Mode.DEFAULT]
            editing.sort(key=lambda p: p.signs)  # stable: signing last, the rest in order
            parts = [(type(p).__name__, p.mode(name)) for p in checking]
            parts += [(type(p).__name__, p.mode(EDIT)) for p in editing]
            parts.append((cls.__name__, deliverer_modes[name]))
            mode = _combine(name, parts)
            stages[name] = _Stage(
                name,
                mode,
                tuple(getattr(p, name) for p in checking),
                tuple(p.edit for p in editing),
                deliverer_modes[name] is not Mode.DEFAULT,
            )
            modes[name] = mode
        for name in PLANNED_HOOKS[len(HOOKS) :]:  # reset and close: the deliverer's
            modes[name] = deliverer_modes[name]
        self._stages: Mapping[str, _Stage] = stages
        #: Where each hook of this pipeline's handlers runs.
        self.modes: Mapping[str, Mode] = modes

    def _check_reachable(self) -> None:
        answered: dict[str, Policy] = {}
        for policy in self.policies:
            checks = policy.checks()
            if not checks:
                raise TypeError(
                    f"{policy!r} checks nothing: it overrides none of the hooks "
                    f"{', '.join((*STAGES, EDIT))}, so it can never be reached"
                )
            for name in checks:
                earlier = answered.get(name)
                if earlier is not None:
                    raise TypeError(
                        f"{policy!r}.{name}() can never be reached: {earlier!r} before it "
                        f"answers every {name}"
                    )
            for name in policy.answers_every:
                answered.setdefault(name, policy)

    def _check_relay(self, deliverer: type[Handler]) -> None:
        control = next((i for i, p in enumerate(self.policies) if p.controls_relay), None)
        if control is None:
            if deliverer.delivers_onward and not self.open_relay:
                raise ValueError(
                    f"this Pipeline delivers onward ({deliverer.__name__}) without relay "
                    "control, so anyone could relay through it: add "
                    "RelayControl(networks=[...], domains=[...]) before deliver=, "
                    "or say open_relay=True"
                )
            return
        for policy in self.policies[:control]:
            accepts = policy.accepts if policy.accepts is not None else frozenset(policy.checks())
            if "rcpt" in accepts and not policy.authorises_relay:
                raise ValueError(
                    f"{policy!r} can Accept at RCPT and stands before "
                    f"{self.policies[control]!r}, so it would skip relay control: "
                    "move it after relay control"
                )

    def __call__(self) -> Handler:
        """A handler for one connection: these policies, a new deliverer."""
        return _Connection(self, self.deliver())

    def __repr__(self) -> str:
        listed = ", ".join(repr(p) for p in self.policies)
        return f"Pipeline({listed}{', ' if listed else ''}deliver={self.deliverer_class.__name__})"


def _refusal(result: object, where: Callable[..., object]) -> bool:
    """True when a check's answer ends its stage; False for Accept; TypeError for nonsense."""
    if isinstance(result, Accept):
        return False
    if isinstance(result, (Reject, Close)):
        return True
    if isinstance(result, Reply):
        return result.code >= 400
    owner = getattr(where, "__self__", where)
    raise TypeError(
        f"{owner!r}.{getattr(where, '__name__', '?')}() returned {result!r}, "
        "not Accept, Reject, Close or None"
    )


@final
class _Connection(Handler):
    """One connection's run of a Pipeline: the context, and the deliverer's handler."""

    def __init__(self, pipeline: Pipeline, deliverer: Handler) -> None:
        self.pipeline = pipeline
        self.deliverer = deliverer
        self.ctx = Context()

    def hook_modes(self) -> Mapping[str, Mode]:
        return self.pipeline.modes

    def bind(self, session: Session, envelope: Envelope) -> None:
        super().bind(session, envelope)
        self.ctx.session = session
        self.ctx.envelope = envelope
        self.deliverer.bind(session, envelope)

    def _run(self, name: str, *args: Any) -> HookResult | Awaitable[HookResult]:
        stage = self.pipeline._stages[name]
        if stage.mode is Mode.ASYNC:
            return self._run_async(stage, args)
        ctx = self.ctx
        accepted: HookResult | None = None
        for check in stage.checks:
            result = check(ctx, *args)
            if result is None:
                continue
            if _refusal(result, check):
                return result  # type: ignore[return-value]  # not None here
            accepted = result  # type: ignore[assignment]
            break
        for edit in stage.edits:
            edit(ctx, *args)
        if stage.delivers:
            return getattr(self.deliverer, name)(*args)  # type: ignore[no-any-return]
        return accepted if accepted is not None else _DEFAULTS[name]

    async def _run_async(self, stage: _Stage, args: tuple[Any, ...]) -> HookResult:
        ctx = self.ctx
        accepted: HookResult | None = None
        for check in stage.checks:
            result = check(ctx, *args)
            if inspect.isawaitable(result):
                result = await result
            if result is None:
                continue
            if _refusal(result, check):
                return result
            accepted = result
            break
        for edit in stage.edits:
            done = edit(ctx, *args)
            if inspect.isawaitable(done):
                await done
        if stage.delivers:
            answer = getattr(self.deliverer, stage.name)(*args)
            if inspect.isawaitable(answer):
                answer = await answer
            return answer  # type: ignore[no-any-return]
        return accepted if accepted is not None else _DEFAULTS[stage.name]

    def welcome(self, client_ip: str) -> HookResult | Awaitable[HookResult]:
        return self._run("welcome", client_ip)

    def ehlo(self, hostname: str) -> HookResult | Awaitable[HookResult]:
        return self._run("ehlo", hostname)

    def auth(self, user: str, password: str) -> HookResult | Awaitable[HookResult]:
        return self._run("auth", user, password)

    def mail(self, sender: str, params: MailParams) -> HookResult | Awaitable[HookResult]:
        return self._run("mail", sender, params)

    def rcpt(self, recipient: str, params: RcptParams) -> HookResult | Awaitable[HookResult]:
        return self._run("rcpt", recipient, params)

    def data(self, message: Message) -> HookResult | Awaitable[HookResult]:
        return self._run("data", message)

    def reset(self) -> Awaitable[None] | None:
        return self.deliverer.reset()

    def close(self) -> Awaitable[None] | None:
        return self.deliverer.close()

    def __repr__(self) -> str:
        return f"<{self.pipeline!r} connection>"
