"""Connection limits: a total cap and a per-IP cap, loopback exempt from the latter.

Used from the I/O thread only, so it needs no lock. And the open-file limit those connections
need.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import final

__all__ = ["FD_HEADROOM", "ConnectionLimits", "raise_open_file_limit"]

log = logging.getLogger("smtpkit")


def _is_loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


@final
class ConnectionLimits:
    def __init__(self, total: int, per_ip: int) -> None:
        self.total = total
        self.per_ip = per_ip
        self.active = 0
        self._by_ip: dict[str, int] = {}

    def admit(self, ip: str) -> str | None:
        """Count the connection in and return None, or return why it is refused."""
        if self.active >= self.total:
            return "too many connections"
        count = self._by_ip.get(ip, 0)
        if self.per_ip and count >= self.per_ip and not _is_loopback(ip):
            return "too many connections from your address"
        self.active += 1
        self._by_ip[ip] = count + 1
        return None

    def release(self, ip: str) -> None:
        self.active -= 1
        count = self._by_ip.get(ip, 0) - 1
        if count > 0:
            self._by_ip[ip] = count
        else:
            self._by_ip.pop(ip, None)


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
