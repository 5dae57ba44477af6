"""DNS blocklists: `Dnsbl` for the client's address, `Rhsbl` for the sender's domain.

A name is listed when it has an A record in 127.0.0.0/8, other than the 127.255.255.x error
codes (Spamhaus answers those to a public resolver or past a quota: they are not listings). A
lookup that fails (timeout, SERVFAIL) lets the mail in, with a warning: a DNS outage must not
stop mail. Lookups block, so these policies run on the worker pool. Needs dnspython (the `dns`
extra). `dns_servers` points the lookups at given resolvers ("192.0.2.53" or "127.0.0.1:5353");
by default the system's are used.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from typing import ClassVar, Final

from smtp_core import Close, MailParams, Reject

from .._pipeline import Context, Policy, PolicyResult
from .._trace import log_escape
from ._networks import IPAddress, ip_address
from ._resolver import DnsTempError, parse_dns_server, require_dnspython, resolver

__all__ = ["Dnsbl", "Rhsbl", "dnsbl_name", "parse_dns_server"]

log = logging.getLogger("smtpkit.policy")

_DNSBL_ERRORS: Final = ipaddress.IPv4Network("127.255.255.0/24")
_LISTED: Final = ipaddress.IPv4Network("127.0.0.0/8")


def dnsbl_name(ip: str | IPAddress, zone: str) -> str:
    """The DNSBL query name of `ip` under `zone`: reversed octets for IPv4 (2.0.0.127.zone),
    reversed nibbles for IPv6."""
    address = ip_address(ip)
    if address is None:
        raise ValueError(f"not an IP address: {ip!r}")
    reverse = address.reverse_pointer
    reverse = reverse.removesuffix(".in-addr.arpa").removesuffix(".ip6.arpa")
    return f"{reverse}.{zone.strip('.')}"


class _DnsList(Policy):
    """What Dnsbl and Rhsbl share: zones, resolvers, and the lookup."""

    accepts: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self, *zones: str, dns_servers: Sequence[str] | None = None, timeout: float = 5.0
    ) -> None:
        require_dnspython(type(self).__name__)
        if not zones:
            raise ValueError(f"{type(self).__name__} needs at least one zone")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.zones = tuple(zone.strip(".").lower() for zone in zones)
        self.dns_servers = tuple(parse_dns_server(s) for s in dns_servers or ())
        self.timeout = timeout

    def listed(self, name: str, zone: str) -> bool:
        """True if `name` (already under `zone`) has a listing A record."""
        try:
            answer = resolver(self.dns_servers, self.timeout).addresses(name)
        except DnsTempError as exc:
            log.warning("%s: %s; letting it in", zone, exc)
            return False
        for record in answer:
            address = ipaddress.IPv4Address(record)
            if address in _LISTED and address not in _DNSBL_ERRORS:
                return True
        return False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(map(repr, self.zones))})"


class Dnsbl(_DnsList):
    """`welcome`: drops a client whose address a DNS blocklist lists (421, and close), as
    Postfix's `reject_rbl_client`.

    >>> Dnsbl("zen.spamhaus.org")
    """

    def welcome(self, ctx: Context, client_ip: str) -> PolicyResult:
        if ip_address(client_ip) is None:
            return None
        for zone in self.zones:
            if self.listed(dnsbl_name(client_ip, zone), zone):
                log.info("blocked client %s (listed by %s)", client_ip, zone)
                return Close(421, f"Error: client host [{client_ip}] blocked using {zone}")
        return None


class Rhsbl(_DnsList):
    """`mail`: refuses a sender whose domain a domain blocklist lists (554 5.7.1), as
    Postfix's `reject_rhsbl_sender`. The null sender <> is not looked up.

    >>> Rhsbl("dbl.spamhaus.org")
    """

    def mail(self, ctx: Context, sender: str, params: MailParams) -> PolicyResult:
        domain = sender.rpartition("@")[2].rstrip(".").lower() if "@" in sender else ""
        if not domain:
            return None
        for zone in self.zones:
            if self.listed(f"{domain}.{zone}", zone):
                log.info("refused sender <%s> (listed by %s)", log_escape(sender), zone)
                return Reject(
                    554, f"5.7.1 <{sender}>: Sender address rejected: domain listed by {zone}"
                )
        return None
