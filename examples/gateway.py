"""An anti-spam gateway in front of a real MTA: the seed's first use case.

    python3 examples/gateway.py --listen 0.0.0.0:25 --downstream 127.0.0.1:10025 \\
        --hostname mx.example.org --local-domains example.org \\
        --blocklist /etc/smtpkit/blocked.cidr --dnsbl zen.spamhaus.org \\
        --users /etc/smtpkit/users --tls-cert cert.pem --tls-key key.pem \\
        --allow-relay-from 10.0.0.0/8

What it does, hook by hook (docs/examples.md walks through it):

- welcome: a client whose address is in the --blocklist file (one CIDR per line), or listed
  by a --dnsbl zone, gets 421 and is disconnected;
- ehlo:    AUTH is advertised (over TLS, or in plaintext with --auth-allow-plaintext),
  because the gateway has an auth hook;
- auth:    checks the --users file ("user:password" lines, plain or hashed);
- rcpt:    no open relay: a recipient outside --local-domains needs AUTH or a client in an
  --allow-relay-from network (550 5.7.1 Relay access denied); then the downstream MTA
  must accept the recipient too;
- data:    the message goes to the --downstream MTA, before-queue: the client's answer is
  the downstream's.
"""

from __future__ import annotations

import argparse
import functools
import logging
import socket
import sys

from smtp_core import Config
from smtpkit.handlers import (
    CidrBlocklist,
    Dnsbl,
    Networks,
    PasswordAuth,
    PasswordFile,
    RelayControl,
    RelayHandler,
)
from smtpkit.transports import ServerOptions, make_ssl_context, parse_address, serve


class Gateway(CidrBlocklist, Dnsbl, RelayControl, PasswordAuth, RelayHandler):
    """Checks first (in this order), delivery last. Each check is a class attribute."""


def configure(args: argparse.Namespace) -> type[Gateway]:
    """The Gateway, configured from the command line."""

    class ConfiguredGateway(Gateway):
        blocklist = Networks.load(args.blocklist) if args.blocklist else Networks()
        dnsbl_zones = tuple(args.dnsbl)
        dns_server = args.dns_server
        relay_networks = Networks(args.allow_relay_from)
        local_domains = frozenset(args.local_domains)
        password_file = PasswordFile.load(args.users) if args.users else None

    return ConfiguredGateway


def _domains(text: str) -> list[str]:
    return [d.strip().lower().rstrip(".") for d in text.split(",") if d.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="An anti-spam gateway in front of a real MTA.")
    p.add_argument("--listen", type=parse_address, default=("127.0.0.1", 2525), metavar="HOST:PORT")
    p.add_argument(
        "--downstream",
        type=parse_address,
        required=True,
        metavar="HOST:PORT",
        help="the MTA that accepted mail is relayed to",
    )
    p.add_argument(
        "--downstream-starttls",
        choices=("opportunistic", "required", "off"),
        default="opportunistic",
    )
    p.add_argument("--hostname", default=socket.getfqdn())
    p.add_argument("--blocklist", metavar="FILE", help="client networks to drop, one CIDR a line")
    p.add_argument(
        "--dnsbl",
        action="append",
        default=[],
        metavar="ZONE",
        help="DNS blocklist zone to check clients against (repeatable)",
    )
    p.add_argument(
        "--dns-server",
        type=lambda t: parse_address(t, 53),
        metavar="HOST:PORT",
        help="DNS server for --dnsbl lookups (default: the system's resolvers)",
    )
    p.add_argument("--users", metavar="FILE", help="'user:password' lines for AUTH")
    p.add_argument(
        "--allow-relay-from",
        action="append",
        default=[],
        metavar="CIDR",
        help="client networks that may relay without AUTH (repeatable)",
    )
    p.add_argument(
        "--local-domains",
        type=_domains,
        default=[],
        metavar="DOMAIN,...",
        help="domains we receive mail for (anyone may send to them)",
    )
    p.add_argument("--tls-cert", metavar="FILE", help="certificate (PEM): offer STARTTLS")
    p.add_argument("--tls-key", metavar="FILE")
    p.add_argument(
        "--auth-allow-plaintext",
        action="store_true",
        help="offer AUTH without TLS too (tests, or behind a TLS proxy)",
    )
    p.add_argument("--user", metavar="NAME", help="drop root privileges after binding port 25")
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.dnsbl:
        import dns.resolver  # noqa: F401  (fail now, not at the first client: pip install dnspython)
    gateway = configure(args)
    host, port = args.downstream
    factory = functools.partial(
        gateway, host, port, starttls=args.downstream_starttls, local_hostname=args.hostname
    )
    config = Config(hostname=args.hostname, auth_allow_plaintext=args.auth_allow_plaintext)
    ssl_context = make_ssl_context(args.tls_cert, args.tls_key) if args.tls_cert else None
    options = ServerOptions(config=config, listen=(args.listen,), ssl_context=ssl_context)
    serve(factory, options, user=args.user)


if __name__ == "__main__":
    main()
