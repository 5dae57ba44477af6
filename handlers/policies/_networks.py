"""Client networks: `Networks` (a fast set of CIDRs), and the policies that use one at
`welcome`: `CidrBlocklist` and `CidrAllowlist`."""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Iterable, Iterator
from typing import ClassVar, Final

from smtp_core import Accept, Close

from .._pipeline import Context, Policy, PolicyResult

__all__ = ["CidrAllowlist", "CidrBlocklist", "IPAddress", "IPNetwork", "Networks", "ip_address"]

log = logging.getLogger("smtpkit.policy")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def ip_address(ip: str | IPAddress) -> IPAddress | None:
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
        address = ip_address(ip)
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


def _networks(networks: Networks | Iterable[str | IPNetwork | IPAddress]) -> Networks:
    return networks if isinstance(networks, Networks) else Networks(networks)


class CidrBlocklist(Policy):
    """`welcome`: drops a client whose address is in one of `networks` (421, and close), as
    Postfix's `check_client_access cidr:` with REJECT.

    >>> CidrBlocklist(["192.0.2.0/24"]);  CidrBlocklist.load("/etc/smtpkit/blocked")
    """

    blocking: ClassVar[bool] = False
    accepts: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, networks: Networks | Iterable[str | IPNetwork | IPAddress]) -> None:
        self.networks = _networks(networks)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CidrBlocklist:
        """From a file of one CIDR or address per line (`#` comments); see `Networks.load`."""
        return cls(Networks.load(path))

    def welcome(self, ctx: Context, client_ip: str) -> PolicyResult:
        if client_ip in self.networks:
            log.info("blocked client %s (blocklist)", client_ip)
            return Close(421, f"Error: client host [{client_ip}] blocked")
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self.networks)} networks)"


class CidrAllowlist(Policy):
    """`welcome`: Accepts a client whose address is in one of `networks`, so that the
    welcome checks after it (a blocklist, a DNSBL) are skipped for it; others go on to them.
    It says nothing at RCPT: who may relay is relay control's to say.
    """

    blocking: ClassVar[bool] = False
    accepts: ClassVar[frozenset[str]] = frozenset({"welcome"})

    def __init__(self, networks: Networks | Iterable[str | IPNetwork | IPAddress]) -> None:
        self.networks = _networks(networks)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CidrAllowlist:
        return cls(Networks.load(path))

    def welcome(self, ctx: Context, client_ip: str) -> PolicyResult:
        return Accept() if client_ip in self.networks else None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self.networks)} networks)"
