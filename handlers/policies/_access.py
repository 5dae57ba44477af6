"""Who may do what: `RequireTls`, `RequireAuth` and `RelayControl`."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import ClassVar, Final

from smtp_core import MailParams, RcptParams, Reject

from .._pipeline import Context, Policy, PolicyResult
from .._trace import log_escape
from ._networks import IPAddress, IPNetwork, Networks

__all__ = ["LOOPBACK", "RelayControl", "RequireAuth", "RequireTls", "domain_of", "domain_set"]

log = logging.getLogger("smtpkit.policy")

#: The networks `smtpkit serve --handler relay` trusts when nothing else is said.
LOOPBACK: Final = ("127.0.0.0/8", "::1/128")


def domain_of(address: str) -> str:
    """The domain of an address, lowercase, without a final dot ("" for none)."""
    _, at, domain = address.rpartition("@")
    return domain.rstrip(".").lower() if at else ""


def domain_set(names: Iterable[str]) -> frozenset[str]:
    """Domain names as compared: lowercase, without a final dot."""
    return frozenset(name.strip().rstrip(".").lower() for name in names if name.strip())


class RequireTls(Policy):
    """`mail`: 530 5.7.0 until the client has done STARTTLS (Postfix's
    `smtpd_tls_security_level = encrypt`). For submission (587); a public MX must not require
    TLS (RFC 3207 section 4), so give that listener a pipeline without it.
    """

    blocking: ClassVar[bool] = False
    accepts: ClassVar[frozenset[str]] = frozenset()

    def mail(self, ctx: Context, sender: str, params: MailParams) -> PolicyResult:
        if ctx.session.tls:
            return None
        return Reject(530, "5.7.0 Must issue a STARTTLS command first")


class RequireAuth(Policy):
    """`mail`: 530 5.7.0 until the client has authenticated (aiosmtpd's `auth_required`).
    Needs an auth policy (PasswordAuth) in the pipeline for anyone to pass."""

    blocking: ClassVar[bool] = False
    accepts: ClassVar[frozenset[str]] = frozenset()

    def mail(self, ctx: Context, sender: str, params: MailParams) -> PolicyResult:
        if ctx.session.user is not None:
            return None
        return Reject(530, "5.7.0 Authentication required")


class RelayControl(Policy):
    """`rcpt`: no open relay (554 5.7.1 Relay access denied, as Postfix's
    `reject_unauth_destination`).

    A recipient in one of `domains` is ours: anyone may send to it. Any other recipient is
    relayed only for a client in one of `networks` (`permit_mynetworks`), or one that
    authenticated when `authenticated` is true (`permit_sasl_authenticated`). It trusts exactly
    the networks it is given: none by default, not even loopback. A recipient it lets through
    goes on to the next rcpt policy (it never Accepts), so that a recipient table after it still
    checks our own users.
    """

    blocking: ClassVar[bool] = False
    controls_relay: ClassVar[bool] = True
    accepts: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self,
        *,
        networks: Networks | Iterable[str | IPNetwork | IPAddress] = (),
        domains: Iterable[str] = (),
        authenticated: bool = True,
    ) -> None:
        self.networks = networks if isinstance(networks, Networks) else Networks(networks)
        self.domains = domain_set(domains)
        self.authenticated = authenticated

    def is_local(self, recipient: str) -> bool:
        """True if `recipient` is in one of our domains (a bare "postmaster" is ours too)."""
        if "@" not in recipient:
            return recipient.lower() == "postmaster"
        return domain_of(recipient) in self.domains

    def may_relay(self, ctx: Context) -> bool:
        """True if this client may send to any domain."""
        session = ctx.session
        return (self.authenticated and session.user is not None) or (
            session.client_ip in self.networks
        )

    def rcpt(self, ctx: Context, recipient: str, params: RcptParams) -> PolicyResult:
        if self.is_local(recipient) or self.may_relay(ctx):
            return None
        log.info(
            "relay denied: client %s, user %s, to <%s>",
            ctx.session.client_ip,
            log_escape(ctx.session.user or ""),
            log_escape(recipient),
        )
        return Reject(554, f"5.7.1 <{recipient}>: Relay access denied")

    def __repr__(self) -> str:
        nets = [str(net) for net in self.networks]
        return f"RelayControl(networks={nets!r}, domains={sorted(self.domains)!r})"
