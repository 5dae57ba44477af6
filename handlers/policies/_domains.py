"""Addresses: `SenderDomains` and `RecipientDomains` (allow and deny lists of domains), and
`RecipientTable` (our known users)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import ClassVar

from smtp_core import MailParams, RcptParams, Reject

from .._pipeline import Context, Policy, PolicyResult
from .._trace import log_escape
from ._access import domain_of, domain_set

__all__ = ["RecipientDomains", "RecipientTable", "SenderDomains"]

log = logging.getLogger("smtpkit.policy")


class _DomainList(Policy):
    """An allow list and a deny list of domains. An entry ".example.org" matches the
    subdomains of example.org, "example.org" only itself. Deny wins; with an allow list, a
    domain on neither list is refused too."""

    blocking: ClassVar[bool] = False
    accepts: ClassVar[frozenset[str]] = frozenset()
    #: What is refused, in the reply: "Sender" or "Recipient".
    role: ClassVar[str]

    def __init__(self, *, allow: Iterable[str] = (), deny: Iterable[str] = ()) -> None:
        self.allow = domain_set(allow)
        self.deny = domain_set(deny)
        if not self.allow and not self.deny:
            raise ValueError(f"{type(self).__name__} needs allow or deny domains")

    @staticmethod
    def _matches(domain: str, entries: frozenset[str]) -> bool:
        if domain in entries:
            return True
        labels = domain.split(".")
        return any("." + ".".join(labels[i:]) in entries for i in range(1, len(labels)))

    def refuses(self, domain: str) -> bool:
        if self._matches(domain, self.deny):
            return True
        return bool(self.allow) and not self._matches(domain, self.allow)

    def _check(self, address: str) -> PolicyResult:
        domain = domain_of(address)
        if not domain or not self.refuses(domain):
            return None
        log.info("refused %s <%s>: domain", self.role.lower(), log_escape(address))
        return Reject(554, f"5.7.1 <{address}>: {self.role} address rejected: domain not allowed")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(allow={sorted(self.allow)!r}, deny={sorted(self.deny)!r})"


class SenderDomains(_DomainList):
    """`mail`: refuses senders of denied domains, or of domains not allowed (554 5.7.1). The
    null sender <> (bounces) always passes."""

    role = "Sender"

    def mail(self, ctx: Context, sender: str, params: MailParams) -> PolicyResult:
        return self._check(sender)


class RecipientDomains(_DomainList):
    """`rcpt`: refuses recipients in denied domains, or in domains not allowed (554 5.7.1)."""

    role = "Recipient"

    def rcpt(self, ctx: Context, recipient: str, params: RcptParams) -> PolicyResult:
        return self._check(recipient)


class RecipientTable(Policy):
    """`rcpt`: our known users; any other recipient in their domains gets 550 5.1.1 (Postfix's
    `reject_unlisted_recipient`). Recipients in other domains are not its business (None).

    Entries are addresses, compared without case; "alice+lists@example.org" is alice when
    `delimiter` is "+" (Postfix's recipient_delimiter). "@example.org" accepts every user of
    that domain. A bare "postmaster" is always known (RFC 5321 section 4.5.1).
    """

    blocking: ClassVar[bool] = False
    accepts: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, addresses: Iterable[str], *, delimiter: str = "+") -> None:
        self.delimiter = delimiter
        users: set[str] = set()
        catch_all: set[str] = set()
        for entry in addresses:
            local, at, domain = entry.strip().lower().rpartition("@")
            if not at or not domain:
                raise ValueError(f"not an address: {entry!r} (expected user@domain or @domain)")
            if local:
                users.add(f"{local}@{domain.rstrip('.')}")
            else:
                catch_all.add(domain.rstrip("."))
        self.users = frozenset(users)
        self.catch_all = frozenset(catch_all)
        self.domains = frozenset(u.rpartition("@")[2] for u in users) | self.catch_all

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, delimiter: str = "+") -> RecipientTable:
        """One address per line; blank lines and `#` comments are skipped. ValueError names
        the file and line of a malformed entry."""
        entries: list[str] = []
        with open(path, encoding="utf-8") as file:
            for number, line in enumerate(file, 1):
                text = line.partition("#")[0].strip()
                if not text:
                    continue
                if "@" not in text or " " in text:
                    raise ValueError(f"{path}:{number}: not an address: {text!r}")
                entries.append(text)
        return cls(entries, delimiter=delimiter)

    def known(self, recipient: str) -> bool | None:
        """True for a known user, False for an unknown one in our domains, None for a
        recipient in another domain."""
        local, at, domain = recipient.lower().rpartition("@")
        if not at:
            return True if recipient.lower() == "postmaster" else None
        domain = domain.rstrip(".")
        if domain not in self.domains:
            return None
        if domain in self.catch_all or local == "postmaster":
            return True
        base = local.partition(self.delimiter)[0] if self.delimiter else local
        if base:  # "+x@" stays itself
            local = base
        return f"{local}@{domain}" in self.users

    def rcpt(self, ctx: Context, recipient: str, params: RcptParams) -> PolicyResult:
        if self.known(recipient) is not False:
            return None
        log.info("unknown recipient <%s>", log_escape(recipient))
        return Reject(550, f"5.1.1 <{recipient}>: Recipient address rejected: User unknown")

    def __repr__(self) -> str:
        return f"RecipientTable({len(self.users)} users, domains={sorted(self.domains)!r})"
