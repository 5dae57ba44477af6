"""Listening sockets, TLS contexts and privilege dropping: what every transport shares."""

from __future__ import annotations

import logging
import os
import socket
import ssl

__all__ = ["bind", "drop_privileges", "make_ssl_context", "parse_address"]

log = logging.getLogger("smtpkit")
#: The listen() backlog: room for a burst of connections (asyncio's default is 100).
BACKLOG = 1024
Address = tuple[str, int]


def parse_address(text: str, default_port: int = 25) -> Address:
    """ "HOST:PORT", "[v6]:PORT", "HOST" or ":PORT" (all interfaces)."""
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"bad address {text!r}")
        port = rest[1:]
    elif text.count(":") > 1:  # a bare IPv6 address
        host, port = text, ""
    else:
        host, _, port = text.partition(":")
    try:
        number = int(port) if port else default_port
    except ValueError:
        raise ValueError(f"bad port in {text!r}") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"port out of range in {text!r}")
    return host or "0.0.0.0", number


def bind(addresses: tuple[Address, ...], *, reuse_port: bool = False) -> list[socket.socket]:
    """Bind and listen on each address, non-blocking. A host name binds all its addresses."""
    sockets: list[socket.socket] = []
    try:
        for host, port in addresses:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            seen: set[tuple[int, str]] = set()
            for family, type_, proto, _, sockaddr in infos:
                key = (family, str(sockaddr[0]))
                if key in seen:
                    continue
                seen.add(key)
                sock = socket.socket(family, type_, proto)
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                try:
                    sock.bind(sockaddr)
                except OSError as exc:  # say which address: "Address already in use" alone won't
                    text = f"cannot listen on {key[1]} port {port}: {exc.strerror}"
                    raise OSError(exc.errno, text) from exc
                sock.listen(BACKLOG)
                sock.setblocking(False)
                bound = sock.getsockname()
                log.info("listening on %s port %d", bound[0], bound[1])
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def make_ssl_context(cert: str, key: str | None = None) -> ssl.SSLContext:
    """A server context with the stdlib's secure defaults (TLS 1.2 and later)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def drop_privileges(user: str) -> None:
    """Become `user` (after binding port 25 as root): groups, gid, then uid."""
    import pwd

    entry = pwd.getpwnam(user)
    if os.getuid() != 0:
        if os.getuid() == entry.pw_uid:
            return
        raise PermissionError(f"only root can become {user!r}")
    os.setgroups(os.getgrouplist(entry.pw_name, entry.pw_gid))
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    log.info("running as %s (uid %d)", user, entry.pw_uid)
