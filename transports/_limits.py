"""Connection limits: a total cap and a per-IP cap, loopback exempt from the latter.

Per IP means per client: an IPv6 client is counted by its /64, as one client usually holds a
whole /64 and could otherwise spread its connections over as many addresses as it likes.

Used from the I/O thread only, so it needs no lock. And the open-file limit those connections
need.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
from typing import final

__all__ = ["FD_HEADROOM", "ConnectionLimits", "client_key", "in_networks", "raise_open_file_limit"]

log = logging.getLogger("smtpkit")


def client_key(ip: str) -> str:
    """What the per-IP limit counts `ip` under: the address itself; for IPv6 its /64 (as
    "2001:db8::/64"), and an IPv4-mapped IPv6 address as its IPv4 address."""
    if ":" not in ip:
        return ip
    try:
        address = ipaddress.IPv6Address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.IPv6Network((address, 64), strict=False))


@functools.lru_cache(maxsize=16)
def _networks(cidrs: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)


def in_networks(ip: str, cidrs: tuple[str, ...], *, loopback: bool = False) -> bool:
    """Whether `ip` is in one of `cidrs` (or, with `loopback`, a loopback address)."""
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return (loopback and address.is_loopback) or any(address in n for n in _networks(cidrs))


@final
class ConnectionLimits:
    """`exempt`: networks (CIDR) besides loopback that the per-IP cap does not apply to: the
    trusted proxies, whose connections each carry some other client."""

    def __init__(self, total: int, per_ip: int, exempt: tuple[str, ...] = ()) -> None:
        self.total = total
        self.per_ip = per_ip
        self.active = 0
        self._by_ip: dict[str, int] = {}
        self._exempt = exempt

    def admit(self, ip: str) -> str | None:
        """Count the connection in and return None, or return why it is refused."""
        if self.active >= self.total:
            return "too many connections"
        key = client_key(ip)
        count = self._by_ip.get(key, 0)
        if self.per_ip and count >= self.per_ip and not self._exempt_ip(ip):
            return "too many connections from your address"
        self.active += 1
        self._by_ip[key] = count + 1
        return None

    def move(self, old: str, new: str) -> bool:
        """Count a connection admitted from `old` under `new` instead (the client a proxy
        named); False, and nothing changes, if `new` is at its per-IP limit."""
        key, old_key = client_key(new), client_key(old)
        if key == old_key:
            return True
        count = self._by_ip.get(key, 0)
        if self.per_ip and count >= self.per_ip and not self._exempt_ip(new):
            return False
        self._by_ip[key] = count + 1
        self._forget(old_key)
        return True

    def _exempt_ip(self, ip: str) -> bool:
        return in_networks(ip, self._exempt, loopback=True)

    def release(self, ip: str) -> None:
        self.active -= 1
        self._forget(client_key(ip))

    def _forget(self, key: str) -> None:
        count = self._by_ip.get(key, 0) - 1
        if count > 0:
            self._by_ip[key] = count
        else:
            self._by_ip.pop(key, None)


#: File descriptors a server needs besides one per connection: listeners, the self-pipe,
#: log files, spooled messages, DNS sockets.
FD_HEADROOM = 64


def raise_open_file_limit(max_connections: int, workers: int) -> int:
    """Raise RLIMIT_NOFILE's soft limit towards what `max_connections` sessions need (each
    may hold a socket and a spool file, and a relaying hook its outbound connection), up to
    the hard limit; warn when even that is not enough. Returns the soft limit now."""
    try:
        import resource
    except ImportError:  # not on this platform
        return -1
    need = 2 * max_connections + workers + FD_HEADROOM
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        if target > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                soft = target
            except (OSError, ValueError) as exc:
                log.warning("cannot raise the open-file limit to %d: %s", target, exc)
    if soft != resource.RLIM_INFINITY and soft < need:
        log.warning(
            "the open-file limit is %d, %d would fit --max-connections %d: raise the hard"
            " limit (ulimit -Hn) or lower --max-connections",
            soft,
            need,
            max_connections,
        )
    return soft
