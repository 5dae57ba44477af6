"""`smtpkit hash-password`: the hashed form of a password, for a line of an --auth-file."""

from __future__ import annotations

import argparse
import getpass
import sys

from smtpkit.handlers import SCHEMES, hash_password

from ._clierror import CLIError, Exit

__all__ = ["add_arguments", "run_hash_password"]

DESCRIPTION = (
    "Print the hashed form of a password, for a 'user:HASH' line of an --auth-file. The "
    "password is read from standard input (its first line), or prompted for on a terminal."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scheme", choices=SCHEMES, default=SCHEMES[0], help="hash scheme (default %(default)s)"
    )


def run_hash_password(args: argparse.Namespace) -> int:
    """Read a password (stdin, or a prompt on a terminal) and print its hashed form."""
    if sys.stdin is not None and sys.stdin.isatty():
        try:
            password = getpass.getpass("Password: ")
            again = getpass.getpass("Again: ")
        except EOFError:
            raise CLIError("no password given") from None
        if password != again:
            raise CLIError("the passwords differ")
    else:
        line = sys.stdin.readline() if sys.stdin is not None else ""
        password = line.removesuffix("\n").removesuffix("\r")
    if not password:
        raise CLIError("empty password")
    print(hash_password(password, args.scheme))
    return Exit.OK
