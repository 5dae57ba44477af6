"""An anti-spam gateway in front of a real MTA: the seed's first use case.

    python3 examples/gateway.py --listen 0.0.0.0:25 --downstream 127.0.0.1:10025 \\
        --hostname mx.example.org --local-domains example.org \\
        --blocklist /etc/smtpkit/blocked.cidr --dnsbl zen.spamhaus.org \\
        --users /etc/smtpkit/users --tls-cert cert.pem --tls-key key.pem \\
        --allow-relay-from 10.0.0.0/8

It is a `Pipeline`: the policies, in order, then the relay (docs/handlers.md shows the same
gateway as a configuration file, examples/gateway.toml). What it does, hook by hook:

- welcome: a client whose address is in the --blocklist file (one CIDR per line), or listed
  by a --dnsbl zone, gets 421 and is disconnected;
- ehlo:    AUTH is advertised (over TLS, or in plaintext with --auth-allow-plaintext),
  because the gateway has an auth hook;
- auth:    checks the --users file ("user:password" lines, plain or hashed);
- rcpt:    no open relay: a recipient outside --local-domains needs AUTH or a client in an
  --allow-relay-from network (554 5.7.1 Relay access denied); then the downstream MTA
  must accept the recipient too;
- data:    the message goes to the --downstream MTA, before-queue: the client's answer is
  the downstream's.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys

from smtp_core import Config
from smtpkit.handlers import Pipeline, Policy, Relay
from smtpkit.handlers.policies import CidrBlocklist, Dnsbl, PasswordAuth, RelayControl
from smtpkit.transports import ServerOptions, make_ssl_context, parse_address, serve


def gateway(args: argparse.Namespace) -> Pipeline:
    """The checks first, in this order, and the relay to the downstream MTA last."""
    policies: list[Policy] = []
    if args.blocklist:
        policies.append(CidrBlocklist.load(args.blocklist))
    if args.dnsbl:
        servers = [f"{args.dns_server[0]}:{args.dns_server[1]}"] if args.dns_server else None
        policies.append(Dnsbl(*args.dnsbl, dns_servers=servers))
    if args.users:
        policies.append(PasswordAuth.load(args.users))
    policies.append(RelayControl(networks=args.allow_relay_from, domains=args.local_domains))
    host, port = args.downstream
    relay = Relay(host, port, starttls=args.downstream_starttls, local_hostname=args.hostname)
    return Pipeline(*policies, deliver=relay)


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
    factory = gateway(args)
    config = Config(hostname=args.hostname, auth_allow_plaintext=args.auth_allow_plaintext)
    ssl_context = make_ssl_context(args.tls_cert, args.tls_key) if args.tls_cert else None
    options = ServerOptions(config=config, listen=(args.listen,), ssl_context=ssl_context)
    serve(factory, options, user=args.user)


if __name__ == "__main__":
    main()
