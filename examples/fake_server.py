"""The seed's SP_FakeSmtpHandler: accept every sender, recipient and message, with its replies.

    python3 examples/fake_server.py                 # 127.0.0.1:1025, like the seed's main()
    python3 examples/fake_server.py --port 2525 --host 0.0.0.0

The three hooks answer exactly what the C++ handler printed:

    250 <sender@example.org>, sender ok
    250 <rcpt@example.org>, recipient ok
    250 Requested mail action okay, completed.

(ENHANCEDSTATUSCODES is off, so no "2.1.0" creeps into them.) Like the seed, the hooks run on
the worker pool, so they could block on a database without stalling other clients.
"""

from __future__ import annotations

import argparse
import logging
import socket

from smtp_core import Config
from smtpkit.handlers import Accept, Handler, HookResult, MailParams, Message, RcptParams
from smtpkit.transports import ServerOptions, serve


class FakeHandler(Handler):
    """SP_FakeSmtpHandler: from(), rcpt() and data() accept, with the seed's reply texts."""

    def mail(self, sender: str, params: MailParams) -> HookResult:
        return Accept(f"<{sender}>, sender ok")

    def rcpt(self, recipient: str, params: RcptParams) -> HookResult:
        return Accept(f"<{recipient}>, recipient ok")

    def data(self, message: Message) -> HookResult:
        return Accept("Requested mail action okay, completed.")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="The seed's SP_FakeSmtpHandler.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=1025, help="port (0: a free one)")
    parser.add_argument("--hostname", default=None, help="name in the greeting (default: FQDN)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    config = Config(hostname=args.hostname or socket.getfqdn(), enhanced_status_codes=False)
    serve(FakeHandler, ServerOptions(config=config, listen=((args.host, args.port),)))


if __name__ == "__main__":
    main()
