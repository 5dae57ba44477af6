"""An internal delivery MTA: the seed's second use case, as a Pipeline.

    python3 examples/mta.py --listen 127.0.0.1:10025 --maildir-root /srv/mail \\
        --local-domains example.org,example.net --local-users alice,bob
    python3 examples/mta.py ... --lmtp-to 127.0.0.1:24    # hand each message to Dovecot

- rcpt: only the --local-domains are ours (554 5.7.1 Relay access denied for the rest), and a
  recipient must be one of the --local-users there ("alice+lists@example.org" is alice); an
  unknown user gets 550 5.1.1;
- data: the message is written to each user's own Maildir, <root>/<user>/new/, and fsync'ed
  before the 250; or, with --lmtp-to, handed to an LMTP server (Dovecot), whose verdict is ours.

examples/mta.toml is the same MTA as a configuration file for `smtpkit serve --config`.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys

from smtp_core import Config
from smtpkit.handlers import MaildirHandler, Pipeline, Relay
from smtpkit.handlers.policies import RecipientTable, RelayControl
from smtpkit.transports import ServerOptions, parse_address, serve


class UserMaildirs(MaildirHandler):
    """One Maildir per local user: "alice+lists@example.org" is delivered to <root>/alice/."""

    def __init__(self, root: str) -> None:
        super().__init__(root, per_recipient=True)

    def mailbox(self, recipient: str) -> str:
        local = recipient.rpartition("@")[0] or recipient
        return local.lower().partition("+")[0] or local.lower()


def mta(args: argparse.Namespace) -> Pipeline:
    """Our domains, then our users, then delivery."""
    users = [f"{user}@{domain}" for domain in args.local_domains for user in args.local_users]
    if args.lmtp_to:
        host, port = args.lmtp_to
        deliver: Relay | type[MaildirHandler] = Relay(host, port, lmtp=True, starttls="off")
    else:
        root = args.maildir_root

        class Deliver(UserMaildirs):
            def __init__(self) -> None:
                super().__init__(root)

        deliver = Deliver
    return Pipeline(
        RelayControl(domains=args.local_domains),  # trusts no network: a final destination
        RecipientTable(users),
        deliver=deliver,
    )


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
        "--lmtp-to",
        type=lambda text: parse_address(text, 24),
        metavar="HOST:PORT",
        help="deliver to this LMTP server (Dovecot) instead of the Maildirs",
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
    config = Config(hostname=args.hostname, lmtp=args.lmtp)
    serve(mta(args), ServerOptions(config=config, listen=(args.listen,)), user=args.user)


if __name__ == "__main__":
    main()
