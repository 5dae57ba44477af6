"""An internal delivery MTA: the seed's second use case. It implements only mail, rcpt and data.

    python3 examples/mta.py --listen 127.0.0.1:10025 --maildir-root /srv/mail \\
        --local-domains example.org,example.net --local-users alice,bob

- mail: any sender (the gateway in front of it did the checking);
- rcpt: a recipient must be a --local-users user at one of the --local-domains
  ("alice+lists@example.org" is alice); an unknown user gets 550 5.1.1, another domain
  550 5.7.1;
- data: the message is written to each recipient's own Maildir, <root>/<user>/new/, and
  fsync'ed, before the 250.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from typing import ClassVar

from smtp_core import Config
from smtpkit.handlers import Accept, HookResult, MaildirHandler, MailParams, RcptParams, Reject
from smtpkit.transports import ServerOptions, parse_address, serve


class LocalMTA(MaildirHandler):
    """Per-user Maildir delivery for a fixed set of domains and users."""

    local_domains: ClassVar[frozenset[str]] = frozenset()
    local_users: ClassVar[frozenset[str]] = frozenset()
    #: "alice+lists@example.org" is delivered to alice (Postfix's recipient_delimiter).
    delimiter: ClassVar[str] = "+"

    def __init__(self, root: str) -> None:
        super().__init__(root, per_recipient=True)

    def mail(self, sender: str, params: MailParams) -> HookResult:
        return Accept(f"<{sender}>, sender ok")

    def rcpt(self, recipient: str, params: RcptParams) -> HookResult:
        _, at, domain = recipient.rpartition("@")
        if at and domain.lower().rstrip(".") not in self.local_domains:
            return Reject(550, f"5.7.1 <{recipient}>: Relay access denied")
        if self.user(recipient) is None:
            return Reject(550, f"5.1.1 <{recipient}>: Recipient address rejected: User unknown")
        return Accept(f"<{recipient}>, recipient ok")

    # data() is MaildirHandler's: one durable copy per mailbox, named by mailbox() below.

    def mailbox(self, recipient: str) -> str:
        user = self.user(recipient)
        if user is None:  # rcpt() let no such recipient through
            raise ValueError(f"not a local user: {recipient!r}")
        return user

    def user(self, recipient: str) -> str | None:
        """The local user of `recipient`, or None. A bare "Postmaster" is the user postmaster."""
        local, at, _ = recipient.rpartition("@")
        if not at:
            local = recipient
        name = local.lower().partition(self.delimiter)[0] if self.delimiter else local.lower()
        return name if name in self.local_users else None


def _names(text: str) -> list[str]:
    return [n.strip().lower().rstrip(".") for n in text.split(",") if n.strip()]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="An internal delivery MTA: per-user Maildirs.")
    p.add_argument(
        "--listen", type=parse_address, default=("127.0.0.1", 10025), metavar="HOST:PORT"
    )
    p.add_argument("--hostname", default=socket.getfqdn())
    p.add_argument(
        "--maildir-root", default="mail", metavar="DIR", help="each user's Maildir is DIR/<user>/"
    )
    p.add_argument(
        "--local-domains",
        type=_names,
        action="extend",
        default=[],
        metavar="DOMAIN,...",
        required=True,
    )
    p.add_argument(
        "--local-users", type=_names, action="extend", default=[], metavar="USER,...", required=True
    )
    p.add_argument("--lmtp", action="store_true", help="speak LMTP (one reply per recipient)")
    p.add_argument("--user", metavar="NAME", help="drop root privileges after binding")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    class ConfiguredMTA(LocalMTA):
        local_domains = frozenset(args.local_domains)
        local_users = frozenset(args.local_users)

        def __init__(self) -> None:
            super().__init__(args.maildir_root)

    config = Config(hostname=args.hostname, lmtp=args.lmtp)
    serve(ConfiguredMTA, ServerOptions(config=config, listen=(args.listen,)), user=args.user)


if __name__ == "__main__":
    main()
