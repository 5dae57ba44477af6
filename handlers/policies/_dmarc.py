"""DMARC (RFC 7489) at the end of data: the From: domain's policy, applied to what SPF and DKIM
found, aligned with the organisational domain from the public suffix list (publicsuffixlist).
"""

from __future__ import annotations

import enum
import random
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, final

from .._message import Message
from .._pipeline import Context, PolicyResult
from ._authres import (
    DEFAULT_MAX_SCAN_SIZE,
    Action,
    AuthPolicy,
    AuthState,
    MethodResult,
    Result,
    act,
    choose_actions,
    from_domains,
    too_large,
)
from ._dkim import dkim_results, dkimpy
from ._resolver import DnsTempError, Resolver, require_dnspython, resolver
from ._spf import spf_result

__all__ = ["Dmarc", "Outcome", "organizational_domain"]


class Outcome(enum.Enum):
    """What a DMARC evaluation can ask of us: a failed message's disposition, or an error."""

    #: The domain asks that failing mail be refused.
    REJECT = "reject"
    #: The domain asks that failing mail be treated as suspicious (filed as junk).
    QUARANTINE = "quarantine"
    #: The domain only monitors.
    NONE = "none"
    #: A DNS lookup failed for now.
    TEMPERROR = "temperror"
    #: The message has no single From: domain (RFC 7489 section 6.6.1).
    PERMERROR = "permerror"


DMARC_ACTIONS: Final[Mapping[Outcome, Action]] = {
    Outcome.REJECT: Action.REJECT,
    Outcome.QUARANTINE: Action.FLAG,
    Outcome.NONE: Action.ACCEPT,
    Outcome.TEMPERROR: Action.TEMPFAIL,
    Outcome.PERMERROR: Action.ACCEPT,
}
#: A DMARC record: "v=DMARC1" first, then tag=value pairs.
_RECORD: Final = re.compile(rb"v\s*=\s*DMARC1\s*(;|$)", re.IGNORECASE)
#: pct= sampling: a message outside the sample gets the next weaker disposition.
_WEAKER: Final = {Outcome.REJECT: Outcome.QUARANTINE, Outcome.QUARANTINE: Outcome.NONE}

_suffixes: Any = None
_suffixes_lock = threading.Lock()


def organizational_domain(domain: str) -> str:
    """The registered domain under its public suffix (`mail.example.co.uk` ->
    `example.co.uk`), from the public suffix list; a suffix itself stays as it is."""
    global _suffixes
    with _suffixes_lock:
        if _suffixes is None:
            try:
                from publicsuffixlist import PublicSuffixList
            except ImportError:
                raise RuntimeError(
                    "DMARC needs publicsuffixlist: pip install 'smtpkit[auth]'"
                ) from None
            _suffixes = PublicSuffixList()
    return str(_suffixes.privatesuffix(domain.lower()) or domain.lower())


@final
@dataclass(frozen=True, slots=True)
class _Record:
    policy: Outcome
    #: Found at the organisational domain, for a subdomain: `sp` applies.
    subdomain_policy: Outcome | None
    strict_dkim: bool
    strict_spf: bool
    percent: int


def _parse(record: bytes) -> _Record | None:
    tags: dict[str, str] = {}
    for part in record.decode("ascii", "replace").split(";")[1:]:
        name, _, value = part.partition("=")
        tags.setdefault(name.strip().lower(), value.strip().lower())
    policies = {o.value: o for o in (Outcome.REJECT, Outcome.QUARANTINE, Outcome.NONE)}
    policy = policies.get(tags.get("p", ""))
    if policy is None:
        if "rua" not in tags:
            return None  # RFC 7489 section 6.6.3: not a usable record
        policy = Outcome.NONE
    percent = tags.get("pct", "100")
    return _Record(
        policy,
        policies.get(tags.get("sp", "")),
        tags.get("adkim") == "s",
        tags.get("aspf") == "s",
        min(100, int(percent)) if percent.isdigit() else 100,
    )


def _lookup(found: Resolver, domain: str) -> _Record | None:
    records = [r for r in found.txt(f"_dmarc.{domain}") if _RECORD.match(r)]
    return _parse(records[0]) if len(records) == 1 else None


def _aligned(domain: str, author: str, strict: bool) -> bool:
    domain = domain.rstrip(".").lower()
    if strict:
        return domain == author
    return bool(domain) and organizational_domain(domain) == organizational_domain(author)


class Dmarc(AuthPolicy):
    """`data`: the From: domain's DMARC policy (RFC 7489), evaluated on the SPF and DKIM
    results (checked here when no Spf or Dkim policy did), aligned per the record's `adkim`
    and `aspf` over the organisational domain (public suffix list).

    A message that fails gets the action of the domain's disposition: by default `reject`
    refuses it (550 5.7.1), `quarantine` flags it (`X-Spam-Flag: YES`), `none` accepts it;
    `temperror` (a DNS failure: 451 4.7.1) and `permerror` (no single From: domain: accepted)
    too. Each takes an Action. Authenticated clients are not checked.

    >>> Dmarc(quarantine="reject")
    """

    def __init__(
        self,
        *,
        dns_servers: Sequence[str] = (),
        timeout: float = 5.0,
        max_scan_size: int = DEFAULT_MAX_SCAN_SIZE,
        **actions: Action | str,
    ) -> None:
        require_dnspython("Dmarc")
        dkimpy()
        organizational_domain("example.org")  # load the list now, not at the first client
        self.resolver = resolver(dns_servers, timeout)
        self.max_scan_size = max_scan_size
        self.actions = choose_actions(DMARC_ACTIONS, actions)

    def data(self, ctx: Context, message: Message) -> PolicyResult:
        if ctx.session.user is not None:
            return None
        state = AuthState.of(ctx, message)
        if state.dmarc is None:
            state.dmarc, state.dmarc_outcome = self.evaluate(ctx, message)
        outcome = state.dmarc_outcome
        if not isinstance(outcome, Outcome):
            return None
        domain = state.dmarc.prop("header.from")
        if outcome is Outcome.TEMPERROR:
            text = f"temporary DNS error evaluating DMARC for {domain}, try again later"
        elif outcome is Outcome.PERMERROR:
            text = "DMARC needs exactly one From: domain"
        else:
            text = f"Email rejected per DMARC policy for {domain}"
        return act(self.actions[outcome], state, "dmarc", text)

    def evaluate(self, ctx: Context, message: Message) -> tuple[MethodResult, Outcome | None]:
        """The DMARC result of this message, and what to act on (None: nothing)."""
        domains = set(from_domains(message))
        if len(domains) != 1 or "" in domains:
            reason = "no From: domain" if not domains else "not one From: domain"
            return MethodResult("dmarc", Result.PERMERROR, reason), Outcome.PERMERROR
        (author,) = domains
        header_from = (("header.from", author),)
        organisation = organizational_domain(author)
        try:
            record = _lookup(self.resolver, author)
            inherited = record is None and organisation != author
            if inherited:
                record = _lookup(self.resolver, organisation)
        except DnsTempError as exc:
            return MethodResult("dmarc", Result.TEMPERROR, str(exc), header_from), Outcome.TEMPERROR
        if record is None:
            return MethodResult("dmarc", Result.NONE, properties=header_from), None
        spf = spf_result(ctx, self.resolver)
        spf_domain = AuthState.of(ctx).spf_domain
        dkim = dkim_results(ctx, message, self.resolver, self.max_scan_size)
        if (spf.result is Result.PASS and _aligned(spf_domain, author, record.strict_spf)) or any(
            r.result is Result.PASS and _aligned(r.prop("header.d"), author, record.strict_dkim)
            for r in dkim
        ):
            return MethodResult("dmarc", Result.PASS, properties=header_from), None
        policy = record.policy
        if inherited and record.subdomain_policy is not None:
            policy = record.subdomain_policy
        if any(r.result is Result.POLICY for r in dkim):  # not verified: too large
            reason = too_large(self.max_scan_size)
            return MethodResult("dmarc", Result.NONE, reason, header_from), None
        if Result.TEMPERROR in (spf.result, *(r.result for r in dkim)):
            reason = "temporary DNS error in SPF or DKIM"
            return MethodResult("dmarc", Result.TEMPERROR, reason, header_from), Outcome.TEMPERROR
        disposition = policy
        if record.percent < 100 and random.randrange(100) >= record.percent:
            disposition = _WEAKER.get(policy, policy)
        comment = f"p={policy.value} dis={disposition.value}"
        return MethodResult("dmarc", Result.FAIL, "", header_from, comment), disposition

    def __repr__(self) -> str:
        return "Dmarc()"
