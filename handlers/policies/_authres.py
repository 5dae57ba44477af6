"""What the email-authentication policies share: results, actions, and the one
`Authentication-Results:` header (RFC 8601) they write together.

SPF is checked at MAIL, DKIM, ARC and DMARC at the end of data; each records its result in the
connection's `AuthState` (`ctx.state[AuthState]`), and DMARC reuses what SPF and DKIM found
(or finds it itself when they are not in the pipeline). At the edit stage, after every check,
the first of them to run writes one header with every result of the message, and removes the
copies the client sent that claim our hostname as their authserv-id (forgeries: only we
speak for it).
"""

from __future__ import annotations

import email.utils
import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Final, TypeVar, final

from smtp_core import Reject

from .._message import Message
from .._pipeline import Context, Policy, PolicyResult

__all__ = [
    "DEFAULT_MAX_SCAN_SIZE",
    "Action",
    "AuthPolicy",
    "AuthState",
    "MethodResult",
    "Result",
    "authentication_results",
    "choose_actions",
    "spf_key",
]

K = TypeVar("K", bound=enum.Enum)

#: Checks that need the whole message skip larger ones (and say so in the header).
DEFAULT_MAX_SCAN_SIZE: Final = 20 * 1024 * 1024
#: The header section read to find From: (Postfix keeps 100 KiB of a header).
_HEADER_LIMIT: Final = 256 * 1024
#: Characters a header value must never carry: controls (CR, LF, NUL...).
_CONTROLS: Final = re.compile(r"[\x00-\x1f\x7f]")
#: RFC 2045 token: what may stand unquoted as a property value.
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~@]+\Z")


class Result(enum.Enum):
    """An RFC 8601 result (each method uses its own subset)."""

    PASS = "pass"
    FAIL = "fail"
    SOFTFAIL = "softfail"
    NEUTRAL = "neutral"
    NONE = "none"
    #: A DNS lookup failed for now: try again later.
    TEMPERROR = "temperror"
    #: The sender's records are broken.
    PERMERROR = "permerror"
    #: DKIM: signed, but not verified by our choice (the message was over max_scan_size).
    POLICY = "policy"


#: Results a method's registry lacks, and how they are written: RFC 8617 gives ARC no
#: temperror, so a chain that could not be checked for now is "none" (the reason says why).
_WRITTEN_AS: Final = {("arc", Result.TEMPERROR): Result.NONE}


class Action(enum.Enum):
    """What a policy does with a result, configurable per result."""

    #: Let it through; the result is in Authentication-Results.
    ACCEPT = "accept"
    #: Let it through, marked `X-Spam-Flag: YES` so that the mailbox files it as junk.
    FLAG = "flag"
    #: 451: the client tries again later.
    TEMPFAIL = "tempfail"
    #: 550: refused.
    REJECT = "reject"

    @classmethod
    def of(cls, value: Action | str) -> Action:
        """An Action from itself or its name ("reject"); ValueError for anything else."""
        if isinstance(value, Action):
            return value
        try:
            return cls(value)
        except ValueError:
            known = ", ".join(a.value for a in cls)
            raise ValueError(f"{value!r} is not an action: one of {known}") from None


def quote(value: str) -> str:
    """A property value as RFC 8601 writes it: a token, or a quoted-string; controls become
    '?', so that nothing a client chose can end the field or start another."""
    value = _CONTROLS.sub("?", value)
    if _TOKEN.match(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@final
@dataclass(frozen=True, slots=True)
class MethodResult:
    """One `method=result` of Authentication-Results, with its reason and properties."""

    method: str
    result: Result
    reason: str = ""
    #: ("smtp.mailfrom", "a@example.org"), ("header.d", "example.org"), ...
    properties: tuple[tuple[str, str], ...] = ()
    #: A short comment after the result: "(p=reject dis=reject)".
    comment: str = ""

    def prop(self, name: str) -> str:
        return next((v for k, v in self.properties if k == name), "")

    def __str__(self) -> str:
        written = _WRITTEN_AS.get((self.method, self.result), self.result)
        text = f"{self.method}={written.value}"
        if self.comment:
            text += f" ({_CONTROLS.sub('?', self.comment).replace(')', ']').replace('(', '[')})"
        if self.reason:
            text += f" reason={quote(self.reason)}"
        return text + "".join(f" {k}={quote(v)}" for k, v in self.properties)


def authentication_results(authserv_id: str, results: Iterable[MethodResult]) -> str:
    """The value of an Authentication-Results field: `id; spf=pass ...; dkim=...`, folded one
    result a line; `id; none` when nothing was checked."""
    parts = [str(r) for r in results] or ["none"]
    return f"{authserv_id};\r\n\t" + ";\r\n\t".join(parts)


def _authserv_id(value: str) -> str:
    """The authserv-id a received Authentication-Results value claims (its first token)."""
    value = re.sub(r"\([^()]*\)", " ", value)  # comments
    return value.split(";", 1)[0].strip().split(None, 1)[0].lower() if value.strip() else ""


@final
@dataclass(slots=True)
class AuthState:
    """One connection's authentication results: SPF for the current transaction, the rest for
    the current message. Found in `ctx.state[AuthState]`."""

    #: (client ip, HELO name, sender) the SPF result is for.
    spf_for: tuple[str, str, str] | None = None
    spf: MethodResult | None = None
    #: The domain SPF checked (MAIL FROM's, or HELO's for the null sender): DMARC aligns it.
    spf_domain: str = ""
    #: The message the results below are for: (queue id, id of the Message).
    message: tuple[str | None, int] | None = None
    dkim: list[MethodResult] | None = None
    arc: MethodResult | None = None
    dmarc: MethodResult | None = None
    #: What DMARC asks of us for this message (its Outcome), once evaluated.
    dmarc_outcome: enum.Enum | None = None
    #: Actions that mark the message (X-Spam-Flag), set by the checks.
    flagged: list[str] = field(default_factory=list)
    #: The header has been written for `message`.
    written: bool = False

    @classmethod
    def of(cls, ctx: Context, message: Message | None = None) -> AuthState:
        """The connection's state; with `message`, its per-message results reset when that
        is a new message. (Nothing here holds the message or its bytes past data.)"""
        state = ctx.state.get(cls)
        if state is None:
            state = ctx.state[cls] = cls()
        key = (ctx.envelope.queue_id, id(message))
        if message is not None and state.message != key:
            state.message = key
            state.dkim = state.arc = state.dmarc = state.dmarc_outcome = None
            state.flagged = []
            state.written = False
        return state

    def spf_of(self, ctx: Context) -> MethodResult | None:
        """The SPF result of this transaction, if it was checked."""
        return self.spf if self.spf_for == spf_key(ctx) else None

    def results(self, ctx: Context) -> list[MethodResult]:
        done = [self.spf_of(ctx), *(self.dkim or ()), self.arc, self.dmarc]
        return [r for r in done if r is not None]


def spf_key(ctx: Context, sender: str | None = None) -> tuple[str, str, str]:
    """What an SPF result depends on: the client's address, its HELO name, the sender. The
    MAIL hook gives its `sender`: the envelope has it only once MAIL is accepted."""
    if sender is None:
        sender = ctx.envelope.sender or ""
    return (ctx.session.client_ip, ctx.session.helo_name or "", sender)


def read_whole(message: Message, max_scan_size: int) -> bytes | None:
    """The whole message, for a check that needs it; None when it is larger than
    `max_scan_size`. Each check reads its own copy and drops it when done."""
    return None if message.size > max_scan_size else message.read()


def too_large(max_scan_size: int) -> str:
    return f"not checked: message larger than max_scan_size ({max_scan_size} octets)"


def header_fields(message: Message) -> list[tuple[str, str]]:
    """The (name, unfolded value) of each field of the header section (its first 256 KiB)."""
    head = bytearray()
    with message.open() as file:
        while len(head) < _HEADER_LIMIT:
            piece = file.read(64 * 1024)
            if not piece:
                break
            head += piece
            if head.startswith(b"\r\n") or b"\r\n\r\n" in head:
                break
    end = head.find(b"\r\n\r\n")
    section = bytes(head if end < 0 else head[: end + 2]).decode("utf-8", "replace")
    fields: list[tuple[str, str]] = []
    for line in section.split("\r\n"):
        if line[:1] in (" ", "\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + line)
        elif ":" in line:
            name, _, value = line.partition(":")
            fields.append((name.strip(), value))
        else:
            break
    return [(name, value.strip()) for name, value in fields]


def from_domains(message: Message) -> list[str]:
    """The domains of the RFC 5322 From: addresses (lowercase); DMARC needs exactly one."""
    values = [v for n, v in header_fields(message) if n.lower() == "from"]
    domains = []
    for _, address in email.utils.getaddresses(values):
        domain = address.rpartition("@")[2].strip().rstrip(".").lower() if "@" in address else ""
        domains.append(domain)
    return domains


#: The enhanced status code's subject.detail of each method's refusals (RFC 7372, RFC 8617).
_DETAIL: Final = {"spf": "7.23", "spf-error": "7.24", "dkim": "7.20", "arc": "7.29", "dmarc": "7.1"}


def act(action: Action, state: AuthState, detail: str, text: str) -> PolicyResult:
    """The reply an action gives: 550 or 451 with the method's enhanced code, or None
    (accept; flagged first when the action is FLAG)."""
    if action is Action.REJECT:
        return Reject(550, f"5.{_DETAIL[detail]} {text}")
    if action is Action.TEMPFAIL:
        return Reject(451, f"4.{_DETAIL[detail]} {text}")
    if action is Action.FLAG:
        state.flagged.append(text)
    return None


def choose_actions(
    defaults: Mapping[K, Action], given: Mapping[str, Action | str]
) -> dict[K, Action]:
    """The defaults with the given `name=action` pairs applied (a name is a key's value:
    "fail", "quarantine"); ValueError names a bad one."""
    by_name = {key.value: key for key in defaults}
    chosen = dict(defaults)
    for name, action in given.items():
        if name not in by_name:
            raise ValueError(f"{name!r} is not a result to act on: one of {', '.join(by_name)}")
        chosen[by_name[name]] = Action.of(action)
    return chosen


class AuthPolicy(Policy):
    """Base of spf, dkim, arc and dmarc: their common edit writes Authentication-Results."""

    accepts: ClassVar[frozenset[str]] = frozenset()

    def edit(self, ctx: Context, message: Message) -> None:
        state = AuthState.of(ctx, message)
        if state.written:
            return  # another authentication policy wrote it
        state.written = True
        ours = ctx.session.hostname.lower()
        message.remove_header("Authentication-Results", lambda v: _authserv_id(v) == ours)
        if state.flagged:
            message.add_header("X-Spam-Flag", "YES")
        message.add_header(
            "Authentication-Results",
            authentication_results(ctx.session.hostname, state.results(ctx)),
        )
