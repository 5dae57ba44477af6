"""Greylisting, after Postgrey: a recipient from an unknown (client network, sender,
recipient) triplet is deferred with `451 4.7.1` until `delay` has passed; a real MTA sends it
again later and gets through, while most spam software never retries.

The client network is the /24 of an IPv4 client and the /64 of an IPv6 one (as Postgrey's
`--lookup-by-subnet`), so that a sender farm retrying from a neighbouring address is
recognised. A client network whose triplets have passed `auto_allow` times is let through
without delay from then on (Postgrey's `--auto-whitelist-clients`).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable
from typing import ClassVar, Final

from smtp_core import RcptParams, Reject

from .._pipeline import Context, Policy, PolicyResult
from .._trace import log_escape
from ._networks import IPAddress, IPNetwork, Networks
from ._store import Store, StoreError, client_network, store_failure, store_of

__all__ = ["Greylist"]

log = logging.getLogger("smtpkit.policy")

_DAY: Final = 86400.0
#: BATV (`prvs=TAG=user@domain`): the tag changes with every message, so it is taken off, or
#: the triplet would never be seen twice.
_BATV: Final = re.compile(r"^prvs=[0-9a-z]+=(.+@.+)$", re.IGNORECASE)


def _sender_key(sender: str) -> str:
    sender = sender.lower()
    match = _BATV.match(sender)
    return match.group(1) if match else sender


class Greylist(Policy):
    """`rcpt`: defer unknown (client network, sender, recipient) triplets.

    >>> Greylist(delay=300, store="sqlite:/var/lib/smtpkit/state.sqlite")

    - The first attempt of a triplet, and every retry before `delay` seconds have passed since
      it, gets `451 4.7.1 <rcpt>: Recipient address rejected: Greylisted, try again in N
      seconds`.
    - A triplet not retried within `retry_window` is forgotten (the next attempt starts over).
    - A retry after the delay passes, and the triplet passes at once for `max_age` after its
      last use.
    - A client network that has passed `auto_allow` triplets is not greylisted any more,
      until `max_age` after its first pass (0: never).
    - Authenticated clients and clients in `exempt` are never greylisted.

    It never Accepts: place it after relay control, so that recipients we would refuse anyway
    leave no triplets.
    """

    accepts: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self,
        *,
        delay: float = 300.0,
        store: Store | str | None = None,
        auto_allow: int = 5,
        retry_window: float = 2 * _DAY,
        max_age: float = 35 * _DAY,
        exempt: Networks | Iterable[str | IPNetwork | IPAddress] = (),
        ipv4_prefix: int = 24,
        ipv6_prefix: int = 64,
    ) -> None:
        if not delay > 0 or not retry_window > delay or not max_age > 0:
            raise ValueError("needs 0 < delay < retry_window, and max_age > 0 (seconds)")
        if isinstance(auto_allow, bool) or not isinstance(auto_allow, int) or auto_allow < 0:
            raise ValueError(f"auto_allow must be 0 (off) or more, not {auto_allow!r}")
        if not (0 <= ipv4_prefix <= 32 and 0 <= ipv6_prefix <= 128):
            raise ValueError("ipv4_prefix must be 0 to 32, and ipv6_prefix 0 to 128")
        self.delay = float(delay)
        self.auto_allow = auto_allow
        self.retry_window = float(retry_window)
        self.max_age = float(max_age)
        self.exempt = exempt if isinstance(exempt, Networks) else Networks(exempt)
        self.ipv4_prefix = ipv4_prefix
        self.ipv6_prefix = ipv6_prefix
        self.store = store_of(store)

    def rcpt(self, ctx: Context, recipient: str, params: RcptParams) -> PolicyResult:
        session = ctx.session
        if session.user is not None or session.client_ip in self.exempt:
            return None
        network = client_network(session.client_ip, self.ipv4_prefix, self.ipv6_prefix)
        sender = _sender_key(ctx.envelope.sender or "")
        triplet = f"{network}/{sender}/{recipient.lower()}"
        store = self.store
        try:
            if self.auto_allow and (store.get(f"grey:client:{network}") or 0) >= self.auto_allow:
                return None
            if store.get(f"grey:pass:{triplet}") is not None:
                store.put(f"grey:pass:{triplet}", 1, self.max_age)  # seen again: keep it
                return None
            now = store.clock()
            first = store.add(f"grey:first:{triplet}", now, self.retry_window)
            wait = self.delay - (now - (now if first is None else first))
            if wait > 0:
                log.info(
                    "greylisted client=%s from=<%s> to=<%s> for %ds",
                    session.client_ip,
                    log_escape(sender),
                    log_escape(recipient),
                    math.ceil(wait),
                )
                return Reject(
                    451,
                    f"4.7.1 <{recipient}>: Recipient address rejected: "
                    f"Greylisted, try again in {math.ceil(wait)} seconds",
                )
            if store.add(f"grey:pass:{triplet}", 1, self.max_age) is None and self.auto_allow:
                store.incr(f"grey:client:{network}", self.max_age)
        except StoreError as exc:
            return store_failure("rcpt", self, exc)
        return None

    def __repr__(self) -> str:
        return f"Greylist(delay={self.delay:g}, {self.store!r})"
