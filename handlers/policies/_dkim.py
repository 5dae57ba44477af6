"""DKIM (RFC 6376) and ARC (RFC 8617) verification at the end of data, with dkimpy.

dkimpy needs the message as bytes: it is read once per message (shared by DKIM, ARC and
DMARC) when it is at most `max_scan_size`; a larger one is not verified, and the header says
so (`dkim=policy reason="not checked: ..."`). Keys are looked up through the one resolver; a
lookup that fails for now is a temperror (dkimpy itself would call it a fail).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

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
    header_fields,
    read_whole,
    too_large,
)
from ._resolver import DnsTempError, Resolver, require_dnspython, resolver

__all__ = ["Arc", "Dkim", "arc_result", "dkim_results"]

log = logging.getLogger("smtpkit.policy")

#: Signatures verified per message at most: each costs a key lookup and a hash of the body.
MAX_SIGNATURES: Final = 5
#: The best of several DKIM results first: the message's own result is the best one.
_RANK: Final = (
    Result.PASS,
    Result.TEMPERROR,
    Result.FAIL,
    Result.PERMERROR,
    Result.NEUTRAL,
    Result.POLICY,
    Result.NONE,
)
DKIM_ACTIONS: Final[Mapping[Result, Action]] = {r: Action.ACCEPT for r in _RANK[1:]}
ARC_ACTIONS: Final[Mapping[Result, Action]] = {
    Result.FAIL: Action.ACCEPT,
    Result.NONE: Action.ACCEPT,
    Result.TEMPERROR: Action.ACCEPT,
}


def dkimpy() -> Any:
    try:
        import dkim
    except ImportError:
        raise RuntimeError("DKIM and ARC need dkimpy: pip install 'smtpkit[auth]'") from None
    return dkim


def _key_lookup(found: Resolver, problems: list[str]) -> Callable[..., bytes | None]:
    """dkimpy's `dnsfunc`: the key record of a selector. A missing or unreadable key is noted
    in `problems` (a permerror, where dkimpy says only False); DnsTempError goes through."""
    dkim = dkimpy()

    def get_txt(name: bytes | str, timeout: float = 5) -> bytes | None:
        text = name.decode("ascii", "replace") if isinstance(name, bytes) else name
        records = found.txt(text)
        record = next((r for r in records if b"p=" in r), records[0] if records else None)
        if record is None:
            problems.append(f"no key at {text.rstrip('.')}")
            return None
        try:
            dkim.evaluate_pk(name, record)
        except Exception as exc:  # dkimpy raises several kinds for a bad record
            problems.append(f"bad key at {text.rstrip('.')}: {exc}")
        return record

    return get_txt


def _tags(value: bytes) -> dict[bytes, bytes]:
    from dkim.util import parse_tag_value

    try:
        return dict(parse_tag_value(value))
    except Exception:
        return {}


def verify_dkim(found: Resolver, content: bytes) -> list[MethodResult]:
    """One result per DKIM signature (the first MAX_SIGNATURES), or `dkim=none`."""
    dkim = dkimpy()
    try:
        signer = dkim.DKIM(content, minkey=1024, timeout=found.timeout)
    except Exception as exc:
        return [MethodResult("dkim", Result.NEUTRAL, f"unreadable message: {exc}")]
    signatures = [v for n, v in signer.headers if n.lower() == b"dkim-signature"]
    if not signatures:
        return [MethodResult("dkim", Result.NONE)]
    results = []
    for index, value in enumerate(signatures[:MAX_SIGNATURES]):
        tags = _tags(value)
        properties = tuple(
            (f"header.{tag}", shown)
            for tag, shown in (
                ("d", tags.get(b"d", b"").decode("ascii", "replace").strip().lower()),
                ("s", tags.get(b"s", b"").decode("ascii", "replace").strip()),
                ("b", b"".join(tags.get(b"b", b"").split())[:8].decode("ascii", "replace")),
            )
            if shown
        )
        problems: list[str] = []
        try:
            valid = signer.verify(index, dnsfunc=_key_lookup(found, problems))
        except DnsTempError as exc:
            results.append(MethodResult("dkim", Result.TEMPERROR, str(exc), properties))
            continue
        except dkim.ValidationError as exc:  # a body hash mismatch, an expired signature
            results.append(MethodResult("dkim", Result.FAIL, str(exc), properties))
            continue
        except Exception as exc:  # dkimpy's other DKIMExceptions, or worse on garbage
            results.append(MethodResult("dkim", Result.PERMERROR, str(exc), properties))
            continue
        if valid:
            result, reason = Result.PASS, ""
        elif problems:
            result, reason = Result.PERMERROR, problems[0]
        else:
            result, reason = Result.FAIL, "signature did not verify"
        results.append(MethodResult("dkim", result, reason, properties))
    return results


def dkim_results(
    ctx: Context, message: Message, found: Resolver, max_scan_size: int
) -> list[MethodResult]:
    """This message's DKIM results, verified once."""
    state = AuthState.of(ctx, message)
    if state.dkim is None:
        content = read_whole(message, max_scan_size)
        if content is not None:
            state.dkim = verify_dkim(found, content)
        elif any(n.lower() == "dkim-signature" for n, _ in header_fields(message)):
            state.dkim = [MethodResult("dkim", Result.POLICY, too_large(max_scan_size))]
        else:
            state.dkim = [MethodResult("dkim", Result.NONE)]
    return state.dkim


def best(results: Sequence[MethodResult]) -> MethodResult:
    return min(results, key=lambda r: _RANK.index(r.result))


def arc_result(ctx: Context, message: Message, found: Resolver, max_scan_size: int) -> MethodResult:
    """This message's ARC chain validation, once."""
    state = AuthState.of(ctx, message)
    if state.arc is None:
        content = read_whole(message, max_scan_size)
        if content is None:
            state.arc = MethodResult("arc", Result.NONE, too_large(max_scan_size))
        else:
            state.arc = _verify_arc(found, content)
    return state.arc


def _verify_arc(found: Resolver, content: bytes) -> MethodResult:
    dkim = dkimpy()
    problems: list[str] = []
    try:
        chain = dkim.ARC(content, minkey=1024, timeout=found.timeout)
        validation, sets, reason = chain.verify(dnsfunc=_key_lookup(found, problems))
    except DnsTempError as exc:
        return MethodResult("arc", Result.TEMPERROR, f"temporary DNS error: {exc}")
    except Exception as exc:
        return MethodResult("arc", Result.FAIL, str(exc))
    if validation == dkim.CV_Pass:
        return MethodResult("arc", Result.PASS, comment=f"i={len(sets)}")
    if validation == dkim.CV_None:
        return MethodResult("arc", Result.NONE)
    return MethodResult("arc", Result.FAIL, problems[0] if problems else str(reason))


class Dkim(AuthPolicy):
    """`data`: verifies the message's DKIM signatures and records them in
    Authentication-Results. By default every result is accepted (RFC 6376 section 6.3: a
    failed signature is no worse than none; DMARC is the policy that acts); `fail=`, `none=`,
    `neutral=`, `permerror=`, `temperror=`, `policy=` take an Action, judged on the best
    result of the message's signatures.

    >>> Dkim(none="reject")          # only signed mail
    """

    def __init__(
        self,
        *,
        dns_servers: Sequence[str] = (),
        timeout: float = 5.0,
        max_scan_size: int = DEFAULT_MAX_SCAN_SIZE,
        **actions: Action | str,
    ) -> None:
        require_dnspython("Dkim")
        dkimpy()
        self.resolver = resolver(dns_servers, timeout)
        self.max_scan_size = max_scan_size
        self.actions = choose_actions(DKIM_ACTIONS, actions)

    def data(self, ctx: Context, message: Message) -> PolicyResult:
        found = best(dkim_results(ctx, message, self.resolver, self.max_scan_size))
        action = self.actions.get(found.result, Action.ACCEPT)
        if found.result is Result.TEMPERROR:
            text = "temporary DNS error verifying the DKIM signature, try again later"
        else:
            text = f"no valid DKIM signature ({found.result.value})"
        return act(action, AuthState.of(ctx), "dkim", text)

    def __repr__(self) -> str:
        return "Dkim()"


class Arc(AuthPolicy):
    """`data`: validates the message's ARC chain (RFC 8617: the authentication results of
    the forwarders it went through) and records it. `fail=`, `none=` and `temperror=` take an
    Action; by default every result is accepted.

    >>> Arc()
    """

    def __init__(
        self,
        *,
        dns_servers: Sequence[str] = (),
        timeout: float = 5.0,
        max_scan_size: int = DEFAULT_MAX_SCAN_SIZE,
        **actions: Action | str,
    ) -> None:
        require_dnspython("Arc")
        dkimpy()
        self.resolver = resolver(dns_servers, timeout)
        self.max_scan_size = max_scan_size
        self.actions = choose_actions(ARC_ACTIONS, actions)

    def data(self, ctx: Context, message: Message) -> PolicyResult:
        result = arc_result(ctx, message, self.resolver, self.max_scan_size).result
        action = self.actions.get(result, Action.ACCEPT)
        text = f"ARC validation failed ({result.value})"
        return act(action, AuthState.of(ctx), "arc", text)

    def __repr__(self) -> str:
        return "Arc()"
