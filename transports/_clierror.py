"""The command line's one kind of error, and its exit statuses."""

from __future__ import annotations

import enum

__all__ = ["CLIError", "Exit"]


class Exit(enum.IntEnum):
    """The exit statuses of `smtpkit` (docs/cli.md lists what each one means)."""

    #: Stopped by SIGTERM or SIGINT; --help, --version; check-config found nothing wrong.
    OK = 0
    #: Failed while starting or serving (a port in use, a Maildir that cannot be made), or
    #: check-config found problems.
    FAILURE = 1
    #: A bad command line or configuration.
    USAGE = 2


class CLIError(Exception):
    """A one-line error for the user: printed as `smtpkit: error: MESSAGE`, then exit `status`."""

    def __init__(self, message: str, status: Exit = Exit.USAGE) -> None:
        super().__init__(message)
        self.status = status
