"""Connection limits: a total cap and a per-IP cap, loopback exempt from the latter.

Used from the I/O thread only, so it needs no lock.
"""

from __future__ import annotations

import ipaddress
from typing import final

__all__ = ["ConnectionLimits"]


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
