"""Rate limits on a shared store, after Postfix's anvil: `RateLimit` counts connections,
messages and recipients per client, sender and user; `AuthLimit` counts failed logins per
client, and `PasswordAuth` applies it by default.

Counts are fixed windows, as anvil's: a count starts at the first event and ends `window`
seconds later. A client address is counted by itself for IPv4 and by its /64 for IPv6 (one
IPv6 host has a whole /64 to choose its address from).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import ClassVar, Final, final

from smtp_core import Close, Decision, MailParams, RcptParams, Reject

from .._handler import Mode
from .._pipeline import Context, Policy, PolicyResult
from .._trace import log_escape
from ._store import MemoryStore, Store, StoreError, client_network, store_failure, store_of

__all__ = ["AuthLimit", "Counted", "Limits", "Per", "RateLimit"]

log = logging.getLogger("smtpkit.policy")


def client_key(ip: str) -> str:
    """How a client is counted: its address (IPv4) or its /64 (IPv6)."""
    return client_network(ip, 32, 64)


class Counted(enum.Enum):
    """What a rate limit counts."""

    CONNECTIONS = "connections"
    MESSAGES = "messages"
    RECIPIENTS = "recipients"


class Per(enum.Enum):
    """Whom a rate limit counts for."""

    #: The client's address (its /64 for IPv6).
    IP = "ip"
    #: The MAIL FROM address, without case; the null sender is not counted.
    SENDER = "sender"
    #: The authenticated user; clients that did not log in are not counted.
    USER = "user"


@final
@dataclass(frozen=True, slots=True)
class _Answer:
    """Where a count is taken, and what a client past its limit gets (Postfix's anvil
    replies: the connection is refused and closed, a message or a recipient is deferred)."""

    stage: str
    code: int
    text: str
    close: bool = False

    def refusal(self, who: str) -> Decision:
        text = self.text.format(who=who)
        return Close(self.code, text) if self.close else Reject(self.code, text)


_ANSWERS: Final[Mapping[Counted, _Answer]] = {
    Counted.CONNECTIONS: _Answer(
        "welcome", 421, "4.7.0 Error: too many connections from {who}", close=True
    ),
    Counted.MESSAGES: _Answer("mail", 450, "4.7.1 Error: too much mail from {who}"),
    Counted.RECIPIENTS: _Answer("rcpt", 450, "4.7.1 Error: too many recipients from {who}"),
}


@final
@dataclass(frozen=True, slots=True)
class Limits:
    """At most this many of each per window; None: not counted."""

    connections: int | None = None
    messages: int | None = None
    recipients: int | None = None

    def items(self) -> list[tuple[Counted, int]]:
        return [
            (Counted(f.name), value)
            for f in fields(self)
            if (value := getattr(self, f.name)) is not None
        ]


class RateLimit(Policy):
    """`welcome`, `mail`, `rcpt`: at most so many connections, messages (MAIL commands) and
    recipients (RCPT commands) per window, for each client address, sender and authenticated
    user; every attempt counts, refused or not.

    >>> RateLimit(ip=Limits(connections=60, messages=100), user=Limits(recipients=1000),
    ...           window=60, store="sqlite:/var/lib/smtpkit/state.sqlite")

    Past a limit: a connection gets `421 4.7.0` and is closed, a MAIL or RCPT `450 4.7.1`
    (a temporary refusal: the client sends it again later). It never Accepts, so it may stand
    anywhere in the pipeline.
    """

    accepts: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self,
        *,
        ip: Limits | None = None,
        sender: Limits | None = None,
        user: Limits | None = None,
        window: float = 60.0,
        store: Store | str | None = None,
    ) -> None:
        if not window > 0:
            raise ValueError(f"window must be more than 0 seconds, not {window!r}")
        checks: dict[str, list[tuple[Per, Counted, int]]] = {}
        for per, limits in ((Per.IP, ip), (Per.SENDER, sender), (Per.USER, user)):
            for counted, limit in (limits or Limits()).items():
                if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
                    raise ValueError(f"{per.value} {counted.value}: must be 1 or more")
                if counted is Counted.CONNECTIONS and per is not Per.IP:
                    raise ValueError(
                        f"{per.value} connections: connections are counted per ip only "
                        f"(the {per.value} is not known when the client connects)"
                    )
                checks.setdefault(_ANSWERS[counted].stage, []).append((per, counted, limit))
        if not checks:
            raise ValueError("no limit given: say ip=, sender= or user= Limits(...)")
        self.window = float(window)
        self.store = store_of(store)
        self._checks: Mapping[str, tuple[tuple[Per, Counted, int], ...]] = {
            stage: tuple(found) for stage, found in checks.items()
        }

    def mode(self, name: str) -> Mode:
        # A stage with nothing to count answers None inline, without a trip to the pool.
        if name in ("welcome", "mail", "rcpt") and name not in self._checks:
            return Mode.INLINE
        return super().mode(name)

    def _count(self, ctx: Context, stage: str, sender: str | None) -> PolicyResult:
        for per, counted, limit in self._checks[stage]:
            if per is Per.IP:
                subject: str | None = client_key(ctx.session.client_ip)
            elif per is Per.SENDER:
                subject = sender.lower() if sender else None
            else:
                subject = ctx.session.user
            if subject is None:
                continue
            key = f"rate:{per.value}:{counted.value}:{self.window:g}:{subject}"
            try:
                count = self.store.incr(key, self.window)
            except StoreError as exc:
                return store_failure(stage, self, exc)
            if count > limit:
                if count == limit + 1:
                    log.warning(
                        "rate limit: %s %s over %d in %gs: %s=%s client=%s",
                        per.value,
                        counted.value,
                        limit,
                        self.window,
                        per.value,
                        log_escape(subject),
                        ctx.session.client_ip,
                    )
                who = f"[{ctx.session.client_ip}]" if per is Per.IP else f"this {per.value}"
                return _ANSWERS[counted].refusal(who)
        return None

    def welcome(self, ctx: Context, client_ip: str) -> PolicyResult:
        return self._count(ctx, "welcome", None) if "welcome" in self._checks else None

    def mail(self, ctx: Context, sender: str, params: MailParams) -> PolicyResult:
        return self._count(ctx, "mail", sender) if "mail" in self._checks else None

    def rcpt(self, ctx: Context, recipient: str, params: RcptParams) -> PolicyResult:
        if "rcpt" not in self._checks:
            return None
        return self._count(ctx, "rcpt", ctx.envelope.sender)

    def __repr__(self) -> str:
        listed = ", ".join(
            f"{per.value} {counted.value}<={limit}"
            for found in self._checks.values()
            for per, counted, limit in found
        )
        return f"RateLimit({listed} per {self.window:g}s, {self.store!r})"


@final
class AuthLimit:
    """At most `max_failures` failed logins per client address (its /64 for IPv6) within
    `window` seconds; the failure that reaches the limit, and every AUTH from that client for
    `cooldown` seconds after it, get `421 4.7.0` and the connection is closed, without a
    password being checked. Successful logins are not counted.

    For an auth policy of your own: ask `check()` before checking a password, tell `failed()`
    when it was wrong, and answer what either returns when it is not None. `store` None is a
    `MemoryStore` of this process.
    """

    def __init__(
        self,
        max_failures: int = 10,
        window: float = 60.0,
        cooldown: float = 300.0,
        *,
        store: Store | str | None = None,
    ) -> None:
        if isinstance(max_failures, bool) or not isinstance(max_failures, int) or max_failures < 1:
            raise ValueError(f"max_failures must be 1 or more, not {max_failures!r}")
        if not window > 0 or not cooldown > 0:
            raise ValueError("window and cooldown must be more than 0 seconds")
        self.max_failures = max_failures
        self.window = float(window)
        self.cooldown = float(cooldown)
        self.store = MemoryStore() if store is None else store_of(store)

    def _refusal(self, client_ip: str) -> Decision:
        return Close(421, f"4.7.0 Error: too many failed logins from [{client_ip}], try later")

    def check(self, client_ip: str) -> PolicyResult:
        """Before checking a password: 421 while the client is cooling down, else None."""
        try:
            cooling = self.store.get(f"auth:cooldown:{client_key(client_ip)}")
        except StoreError as exc:
            return store_failure("auth", self, exc)
        return None if cooling is None else self._refusal(client_ip)

    def failed(self, client_ip: str) -> PolicyResult:
        """After a wrong password: counts it; 421 when it reaches the limit (the cool-down
        starts), else None."""
        key = client_key(client_ip)
        try:
            count = self.store.incr(f"auth:failures:{key}", self.window)
            if count < self.max_failures:
                return None
            self.store.put(f"auth:cooldown:{key}", count, self.cooldown)
        except StoreError as exc:
            log.warning("%r: store unavailable, failure not counted: %s", self, exc)
            return None
        log.warning(
            "auth limit: %d failed logins in %gs from %s: refused for %gs",
            count,
            self.window,
            client_ip,
            self.cooldown,
        )
        return self._refusal(client_ip)

    def __repr__(self) -> str:
        return (
            f"AuthLimit({self.max_failures} per {self.window:g}s, "
            f"cooldown {self.cooldown:g}s, {self.store!r})"
        )
