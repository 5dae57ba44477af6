"""Policies: checks that run before delivery, composed by plain multiple inheritance.

A policy is a Handler mixin whose hooks check something and then hand over to the next class
with `super()`, so a gateway is a class statement that lists its checks in front of its
delivery handler, and is configured with class attributes:

    class Gateway(CidrBlocklist, Dnsbl, RelayControl, PasswordAuth, RelayHandler):
        blocklist = Networks.load("/etc/smtpkit/blocked")
        dnsbl_zones = ("zen.spamhaus.org",)
        relay_networks = Networks(["10.0.0.0/8"])
        local_domains = frozenset({"example.org"})
        password_file = PasswordFile.load("/etc/smtpkit/users")

    serve(functools.partial(Gateway, "mx.internal.example.org", 25))

The checks run in the order of the bases, first to last, and the first refusal wins. Your own
checks follow the same pattern: override a hook, refuse or `return super().hook(...)`.

Policies are plain `def`s: they run on the worker pool with the rest of the handler, so they
may block (DNS). A policy hook cannot call an `async def` hook through `super()` (it would get
a coroutine it cannot await); `Policy` refuses such a class when it is defined.
"""

from __future__ import annotations

import inspect
import ipaddress
import logging
import threading
from collections.abc import Awaitable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar, Final

from smtp_core import Accept, Close, RcptParams, Reject

from ._authfile import PasswordFile
from ._handler import HOOKS, Handler, HookResult
from ._trace import log_escape

if TYPE_CHECKING:
    import os

    import dns.resolver

__all__ = [
    "CidrBlocklist",
    "Dnsbl",
    "Networks",
    "PasswordAuth",
    "Policy",
    "RelayControl",
    "dnsbl_name",
]

log = logging.getLogger("smtpkit.policy")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _address(ip: str | IPAddress) -> IPAddress | None:
    """The address, IPv4-mapped IPv6 unwrapped; None if it is not an IP address."""
    if isinstance(ip, str):
        try:
            ip = ipaddress.ip_address(ip.partition("%")[0])
        except ValueError:
            return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class Networks:
    """An immutable set of IP networks, with a fast `ip in networks`.

    >>> trusted = Networks(["127.0.0.0/8", "10.0.0.0/8", "2001:db8::/32"])
    >>> "10.1.2.3" in trusted
    True

    A lookup costs one set probe per distinct prefix length, whatever the number of networks.
    """

    __slots__ = ("_count", "_prefixes")

    def __init__(self, networks: Iterable[str | IPNetwork | IPAddress] = ()) -> None:
        # (version, prefix length) -> network addresses as ints, shifted to the prefix.
        prefixes: dict[tuple[int, int], set[int]] = {}
        count = 0
        for item in networks:
            net = ipaddress.ip_network(item, strict=False) if isinstance(item, str) else item
            if not isinstance(net, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
                net = ipaddress.ip_network(net)
            if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96:
                mapped = net.network_address.ipv4_mapped
                if mapped is not None:  # ::ffff:a.b.c.d/n is an IPv4 network
                    net = ipaddress.IPv4Network((mapped, net.prefixlen - 96))
            shift = net.max_prefixlen - net.prefixlen
            key = (net.version, net.prefixlen)
            prefixes.setdefault(key, set()).add(int(net.network_address) >> shift)
            count += 1
        self._prefixes: Final = {
            key: frozenset(values) for key, values in sorted(prefixes.items(), reverse=True)
        }
        self._count: Final = count

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Networks:
        """Read one network (CIDR) or address per line; blank lines and `#` comments are
        skipped. ValueError names the file and line of a malformed entry."""
        entries: list[str] = []
        with open(path, encoding="utf-8") as file:
            for number, line in enumerate(file, 1):
                text = line.partition("#")[0].strip()
                if not text:
                    continue
                try:
                    ipaddress.ip_network(text, strict=False)
                except ValueError as exc:
                    raise ValueError(f"{path}:{number}: {exc}") from None
                entries.append(text)
        return cls(entries)

    def __contains__(self, ip: object) -> bool:
        if not isinstance(ip, (str, ipaddress.IPv4Address, ipaddress.IPv6Address)):
            return False
        address = _address(ip)
        if address is None:
            return False
        value = int(address)
        bits = address.max_prefixlen
        for (version, prefixlen), values in self._prefixes.items():
            if version == address.version and value >> (bits - prefixlen) in values:
                return True
        return False

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0

    def __iter__(self) -> Iterator[IPNetwork]:
        for (version, prefixlen), values in self._prefixes.items():
            bits = 32 if version == 4 else 128
            for value in sorted(values):
                yield ipaddress.ip_network((value << (bits - prefixlen), prefixlen))

    def __repr__(self) -> str:
        return f"Networks({[str(net) for net in self]!r})"


class Policy(Handler):
    """Base of the policy mixins. It checks, when a handler class is defined, that no policy
    hook hands over with `super()` to an `async def` hook, which it could not await."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        mro = cls.__mro__
        for name in HOOKS:
            for i, klass in enumerate(mro):
                fn = klass.__dict__.get(name)
                if fn is None or not _is_policy(klass) or inspect.iscoroutinefunction(fn):
                    continue
                later = next((k.__dict__[name] for k in mro[i + 1 :] if name in k.__dict__), None)
                if later is not None and inspect.iscoroutinefunction(later):
                    raise TypeError(
                        f"{cls.__qualname__}: the policy {klass.__qualname__}.{name}() is a "
                        f"plain def, but the {name}() it hands over to with super() is async; "
                        "make both plain (they run on the worker pool) or write an async check"
                    )


def _is_policy(klass: type) -> bool:
    """A policy mixin: a direct subclass of Policy (not a handler class built from them)."""
    return Policy in klass.__bases__


class CidrBlocklist(Policy):
    """`welcome`: drops a client whose address is in `blocklist` (421, and close)."""

    #: Clients to turn away, e.g. `Networks.load("/etc/smtpkit/blocked")`.
    blocklist: ClassVar[Networks] = Networks()

    def welcome(self, client_ip: str) -> HookResult | Awaitable[HookResult]:
        if client_ip in self.blocklist:
            log.info("blocked client %s (blocklist)", client_ip)
            return Close(421, f"Error: client host [{client_ip}] blocked")
        return super().welcome(client_ip)


def dnsbl_name(ip: str | IPAddress, zone: str) -> str:
    """The DNSBL query name of `ip` under `zone`: reversed octets for IPv4 (2.0.0.127.zone),
    reversed nibbles for IPv6."""
    address = _address(ip)
    if address is None:
        raise ValueError(f"not an IP address: {ip!r}")
    reverse = address.reverse_pointer
    reverse = reverse.removesuffix(".in-addr.arpa").removesuffix(".ip6.arpa")
    return f"{reverse}.{zone.strip('.')}"


#: Spamhaus and others answer 127.255.255.x for "error, not a listing" (a public resolver,
#: an exceeded quota): never take those for a listing.
_DNSBL_ERRORS: Final = ipaddress.IPv4Network("127.255.255.0/24")
_LISTED: Final = ipaddress.IPv4Network("127.0.0.0/8")
_resolvers: dict[tuple[tuple[str, int] | None, float], dns.resolver.Resolver] = {}
_resolvers_lock = threading.Lock()


class Dnsbl(Policy):
    """`welcome`: drops a client listed in a DNS blocklist (421, and close).

    A client is listed when `<reversed ip>.<zone>` has an A record in 127.0.0.0/8 (other than
    the 127.255.255.x error codes). A lookup that fails (timeout, SERVFAIL) lets the client
    in, with a warning: a DNS outage must not stop mail. Needs dnspython (the `dns` extra).
    """

    blocking: ClassVar[bool] = True

    #: The DNSBL zones to ask, in order, e.g. ("zen.spamhaus.org",).
    dnsbl_zones: ClassVar[tuple[str, ...]] = ()
    #: The DNS server to ask, as (address, port); None uses the system's resolvers.
    dns_server: ClassVar[tuple[str, int] | None] = None
    #: Seconds for each lookup, retries included.
    dns_timeout: ClassVar[float] = 5.0

    def welcome(self, client_ip: str) -> HookResult | Awaitable[HookResult]:
        for zone in self.dnsbl_zones:
            if self.dnsbl_listed(client_ip, zone):
                log.info("blocked client %s (listed by %s)", client_ip, zone)
                return Close(421, f"Error: client host [{client_ip}] blocked using {zone}")
        return super().welcome(client_ip)

    def dnsbl_listed(self, client_ip: str, zone: str) -> bool:
        """True if `zone` lists `client_ip`."""
        try:
            import dns.exception
            import dns.resolver
        except ImportError:
            raise RuntimeError("Dnsbl needs dnspython: pip install 'smtpkit[dns]'") from None

        try:
            name = dnsbl_name(client_ip, zone)
        except ValueError:
            return False
        resolver = _resolver(self.dns_server, self.dns_timeout)
        try:
            answer = resolver.resolve(name, "A", search=False, lifetime=self.dns_timeout)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return False
        except dns.exception.DNSException as exc:
            log.warning("DNSBL %s: lookup of %s failed (%s); letting it in", zone, name, exc)
            return False
        for record in answer:
            address = ipaddress.IPv4Address(record.to_text())
            if address in _LISTED and address not in _DNSBL_ERRORS:
                return True
        return False


def _resolver(server: tuple[str, int] | None, timeout: float) -> dns.resolver.Resolver:
    import dns.resolver

    key = (server, timeout)
    with _resolvers_lock:
        resolver = _resolvers.get(key)
        if resolver is None:
            if server is None:
                resolver = dns.resolver.Resolver()
            else:
                resolver = dns.resolver.Resolver(configure=False)
                resolver.nameservers = [server[0]]
                resolver.port = server[1]
            resolver.timeout = timeout
            resolver.lifetime = timeout
            resolver.cache = dns.resolver.LRUCache()
            _resolvers[key] = resolver
    return resolver


class RelayControl(Policy):
    """`rcpt`: refuses to be an open relay (550 5.7.1 Relay access denied).

    A recipient in one of `local_domains` is ours and always passes. Any other recipient
    passes only for a client that authenticated, or one whose address is in
    `relay_networks` (Postfix's permit_mynetworks, permit_sasl_authenticated,
    reject_unauth_destination).
    """

    #: The domains we receive mail for, lowercase.
    local_domains: ClassVar[frozenset[str]] = frozenset()
    #: Clients that may relay without AUTH, e.g. Networks(["10.0.0.0/8"]).
    relay_networks: ClassVar[Networks] = Networks()

    def rcpt(self, recipient: str, params: RcptParams) -> HookResult | Awaitable[HookResult]:
        if not self.may_relay_to(recipient):
            log.info(
                "relay denied: client %s, user %s, to <%s>",
                self.session.client_ip,
                log_escape(self.session.user or ""),
                log_escape(recipient),
            )
            return Reject(550, f"5.7.1 <{recipient}>: Relay access denied")
        return super().rcpt(recipient, params)

    def is_local(self, recipient: str) -> bool:
        """True if `recipient` is in one of our domains (a bare "postmaster" is ours too)."""
        _, at, domain = recipient.rpartition("@")
        if not at:
            return recipient.lower() == "postmaster"
        return domain.lower().rstrip(".") in self.local_domains

    def may_relay_to(self, recipient: str) -> bool:
        return (
            self.is_local(recipient)
            or self.session.user is not None
            or self.session.client_ip in self.relay_networks
        )


class PasswordAuth(Policy):
    """`auth`: accepts the users of `password_file` with their passwords.

    When it refuses, the next `auth` in the bases gets its chance; the default refuses
    (535 5.7.8). Defining `auth` makes the server offer AUTH (over TLS
    only, unless the Config allows plaintext).
    """

    #: Hashing is slow by design: always run on the worker pool.
    blocking: ClassVar[bool] = True

    #: The users, e.g. PasswordFile.load("/etc/smtpkit/users"); see `with_password_file`.
    password_file: ClassVar[PasswordFile | None] = None

    def auth(self, user: str, password: str) -> HookResult | Awaitable[HookResult]:
        if self.password_file is not None and self.password_file.check(user, password):
            log.info("authenticated user=%s from %s", log_escape(user), self.session.client_ip)
            return Accept()
        log.warning(
            "authentication failed user=%s from %s", log_escape(user), self.session.client_ip
        )
        return super().auth(user, password)
