"""The one DNS resolver every policy uses: timeouts, a shared cache, and the RFCs' temperror.

`resolver(dns_servers, timeout)` gives the process's resolver for those servers (the system's
when none are given): one dnspython `Resolver` per (servers, timeout), whose cache honours the
records' TTLs and is shared by every connection and policy (DNSBL, SPF, DKIM keys, DMARC).
A name that does not exist, or has no record of the type, is an empty answer; a lookup that
times out or fails (SERVFAIL, no server answering) raises `DnsTempError`, which each policy
turns into its RFC's temperror. Lookups block: the policies that make them run on the pool.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Sequence
from typing import Final, final

__all__ = ["DnsTempError", "Resolver", "parse_dns_server", "resolver"]

#: DNS names are at most 253 characters of labels of at most 63.
_MAX_NAME: Final = 253


class DnsTempError(Exception):
    """A lookup failed for now (timeout, SERVFAIL): the RFCs' temperror, never a crash."""


def parse_dns_server(text: str) -> tuple[str, int]:
    """ "ADDRESS", "ADDRESS:PORT" or "[V6]:PORT" as (address, port); ValueError if malformed."""
    text = text.strip()
    host, port = text, "53"
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":") or "53"
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    ipaddress.ip_address(host)  # resolvers are given by address, never by name
    number = int(port) if port.isdigit() else -1
    if not 0 < number < 65536:
        raise ValueError(f"bad port in {text!r}")
    return host, number


def require_dnspython(who: str) -> None:
    """Fail when a policy is built, not at its first client, if dnspython is missing."""
    try:
        import dns.resolver  # noqa: F401
    except ImportError:
        raise RuntimeError(f"{who} needs dnspython: pip install 'smtpkit[dns]'") from None


@final
class Resolver:
    """Typed lookups over one cached dnspython resolver. Each raises DnsTempError when the
    answer cannot be had now, and answers [] for a name or record that does not exist."""

    __slots__ = ("_resolver", "servers", "timeout")

    def __init__(self, servers: tuple[tuple[str, int], ...], timeout: float) -> None:
        import dns.resolver

        if servers:
            made = dns.resolver.Resolver(configure=False)
            made.nameservers = [host for host, _ in servers]
            made.nameserver_ports = dict(servers)
        else:
            made = dns.resolver.Resolver()
        made.timeout = made.lifetime = timeout
        made.cache = dns.resolver.LRUCache()
        self._resolver = made
        self.servers = servers
        self.timeout = timeout

    def _answer(self, name: str, rdtype: str) -> list[object]:
        import dns.exception
        import dns.name
        import dns.resolver

        name = name.rstrip(".")
        if (
            not name
            or len(name) > _MAX_NAME
            or any(not 0 < len(label) < 64 for label in name.split("."))
        ):
            return []  # not a DNS name: nothing can be there
        try:
            answer = self._resolver.resolve(name, rdtype, search=False, lifetime=self.timeout)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except (dns.name.LabelTooLong, dns.name.NameTooLong, dns.name.EmptyLabel, UnicodeError):
            return []  # an IDNA or length problem: no such name
        except dns.exception.DNSException as exc:
            raise DnsTempError(f"{rdtype} lookup of {name} failed: {exc}") from None
        return list(answer)

    def txt(self, name: str) -> list[bytes]:
        """Each TXT record of `name`, its strings joined."""
        return [b"".join(r.strings) for r in self._answer(name, "TXT")]  # type: ignore[attr-defined]

    def addresses(self, name: str, rdtype: str = "A") -> list[str]:
        """The A (or AAAA) records of `name`, as text."""
        return [r.to_text() for r in self._answer(name, rdtype)]  # type: ignore[attr-defined]

    def mx(self, name: str) -> list[tuple[int, str]]:
        """(preference, exchange) of each MX record of `name`."""
        return [
            (r.preference, r.exchange.to_text(omit_final_dot=True))  # type: ignore[attr-defined]
            for r in self._answer(name, "MX")
        ]

    def ptr(self, name: str) -> list[str]:
        """The PTR targets of `name` (an in-addr.arpa or ip6.arpa name)."""
        return [
            r.target.to_text(omit_final_dot=True)  # type: ignore[attr-defined]
            for r in self._answer(name, "PTR")
        ]

    def flush(self) -> None:
        """Forget every cached answer (after a zone changed)."""
        self._resolver.cache.flush()

    def __repr__(self) -> str:
        where = ", ".join(f"{h}:{p}" for h, p in self.servers) or "system"
        return f"<Resolver {where} timeout={self.timeout}>"


#: The resolvers in use, one per (servers, timeout): each keeps its cache for every connection.
_resolvers: dict[tuple[tuple[tuple[str, int], ...], float], Resolver] = {}
_resolvers_lock = threading.Lock()


def resolver(
    dns_servers: Sequence[str] | Sequence[tuple[str, int]] = (), timeout: float = 5.0
) -> Resolver:
    """The shared resolver for `dns_servers` ("192.0.2.53", "127.0.0.1:5353", or (host, port)
    pairs; the system's when empty) with this per-lookup `timeout` in seconds."""
    if timeout <= 0:
        raise ValueError("timeout must be positive")
    servers = tuple(
        parse_dns_server(s) if isinstance(s, str) else (s[0], int(s[1])) for s in dns_servers
    )
    key = (servers, float(timeout))
    with _resolvers_lock:
        found = _resolvers.get(key)
        if found is None:
            found = _resolvers[key] = Resolver(servers, float(timeout))
    return found
