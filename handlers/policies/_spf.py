"""SPF (RFC 7208), checked at MAIL with pyspf over the one resolver.

pyspf looks names up through its module-level `DNSLookup`; smtpkit points that, once, at a
function that asks the resolver of the check running on this thread (`_current`), and falls
back to pyspf's own for any other caller of pyspf in the process.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Final

from smtp_core import MailParams

from .._pipeline import Context, PolicyResult
from .._trace import log_escape
from ._authres import (
    Action,
    AuthPolicy,
    AuthState,
    MethodResult,
    Result,
    act,
    choose_actions,
    spf_key,
)
from ._resolver import DnsTempError, Resolver, require_dnspython, resolver

__all__ = ["Spf", "check_spf"]

log = logging.getLogger("smtpkit.policy")

#: What each SPF result does unless configured: refuse a fail, defer a DNS failure.
SPF_ACTIONS: Final[Mapping[Result, Action]] = {
    Result.FAIL: Action.REJECT,
    Result.SOFTFAIL: Action.ACCEPT,
    Result.NEUTRAL: Action.ACCEPT,
    Result.NONE: Action.ACCEPT,
    Result.PERMERROR: Action.ACCEPT,
    Result.TEMPERROR: Action.TEMPFAIL,
}
#: RFC 7208 section 4.6.4: the whole evaluation gets this many per-lookup timeouts.
_LOOKUPS_PER_CHECK: Final = 4

_current = threading.local()
_hook_lock = threading.Lock()


def _spf_module() -> Any:
    """pyspf, with its DNS pointed at `_current.resolver` (done once)."""
    try:
        import spf
    except ImportError:
        raise RuntimeError("SPF needs pyspf: pip install 'smtpkit[auth]'") from None
    with _hook_lock:
        if getattr(spf.DNSLookup, "__module__", "") != __name__:
            original = spf.DNSLookup

            def lookup(name: str, qtype: str, strict: Any = True, timeout: float = 30) -> Any:
                found: Resolver | None = getattr(_current, "resolver", None)
                if found is None:
                    return original(name, qtype, strict, timeout)
                return _lookup(spf, found, name, qtype)

            lookup.__module__ = __name__
            spf.DNSLookup = lookup
    return spf


def _lookup(spf: Any, found: Resolver, name: str, qtype: str) -> list[tuple[Any, Any]]:
    """One lookup in pyspf's shape: [((name, type), data), ...]."""
    try:
        if qtype in ("A", "AAAA"):
            return [((name, qtype), a) for a in found.addresses(name, qtype)]
        if qtype == "MX":
            return [((name, qtype), mx) for mx in found.mx(name)]
        if qtype == "PTR":
            return [((name, qtype), p) for p in found.ptr(name)]
        if qtype == "TXT":
            return [((name, qtype), [t]) for t in found.txt(name)]
    except DnsTempError as exc:
        raise spf.TempError(f"DNS {exc}") from None
    return []  # the obsolete SPF record type: not asked


def check_spf(found: Resolver, client_ip: str, helo: str, sender: str) -> tuple[MethodResult, str]:
    """The SPF result for this client and sender (the HELO name's for the null sender), and
    the domain checked."""
    spf = _spf_module()
    identity = ("smtp.mailfrom", sender) if sender else ("smtp.helo", helo)
    domain = (sender.rpartition("@")[2] if sender else helo).rstrip(".").lower()
    if not domain:
        return MethodResult("spf", Result.NONE, "no domain to check", (identity,)), ""
    _current.resolver = found
    try:
        query = spf.query(
            i=client_ip,
            s=sender,
            h=helo,
            timeout=found.timeout,
            querytime=found.timeout * _LOOKUPS_PER_CHECK,
        )
        verdict, _, explanation = query.check()
    except (ValueError, UnicodeError) as exc:  # an address pyspf cannot take
        verdict, explanation = "permerror", str(exc)
    finally:
        _current.resolver = None
    result = Result(verdict)
    reason = explanation if result in (Result.TEMPERROR, Result.PERMERROR) else ""
    return MethodResult("spf", result, reason, (identity,)), domain


def spf_result(ctx: Context, found: Resolver, sender: str | None = None) -> MethodResult:
    """This transaction's SPF result, checked once (`sender`: the MAIL hook's, see spf_key)."""
    state = AuthState.of(ctx)
    key = spf_key(ctx, sender)
    if state.spf_for != key or state.spf is None:
        state.spf, state.spf_domain = check_spf(found, *key)
        state.spf_for = key
    return state.spf


class Spf(AuthPolicy):
    """`mail`: checks that the client may send for the sender's domain (SPF, RFC 7208), and
    acts on the result: by default a fail is refused (550 5.7.23) and a DNS failure deferred
    (451 4.7.24); `fail=`, `softfail=`, `neutral=`, `none=`, `permerror=`, `temperror=` take
    an Action ("accept", "flag", "tempfail", "reject"). Authenticated clients are not checked.

    >>> Spf(softfail="flag", dns_servers=["127.0.0.1:5353"])
    """

    def __init__(
        self,
        *,
        dns_servers: Sequence[str] = (),
        timeout: float = 5.0,
        **actions: Action | str,
    ) -> None:
        require_dnspython("Spf")
        _spf_module()
        self.resolver = resolver(dns_servers, timeout)
        self.actions = choose_actions(SPF_ACTIONS, actions)

    def mail(self, ctx: Context, sender: str, params: MailParams) -> PolicyResult:
        if ctx.session.user is not None:
            return None
        found = spf_result(ctx, self.resolver, sender)
        action = self.actions.get(found.result, Action.ACCEPT)
        domain = AuthState.of(ctx).spf_domain
        if found.result is Result.TEMPERROR:
            log.warning("spf: %s: %s", log_escape(domain), found.reason)
            text = f"<{sender}>: temporary DNS error checking SPF for {domain}, try again later"
            return act(action, AuthState.of(ctx), "spf-error", text)
        if found.result is Result.PERMERROR:
            return act(
                action,
                AuthState.of(ctx),
                "spf-error",
                f"<{sender}>: SPF record of {domain} is broken",
            )
        client = ctx.session.client_ip
        text = f"<{sender}>: SPF {found.result.value}: {client} may not send for {domain}"
        return act(action, AuthState.of(ctx), "spf", text)

    def __repr__(self) -> str:
        return "Spf()"
