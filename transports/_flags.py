"""The flags of `smtpkit serve`, defined once, as data.

Each `Flag` says how its value is read (a `Kind`), where it goes (a `Target`: smtp_core's
`Config`, `ServerOptions`, the `ServeCommand`, or an option of a ready handler) and which field it
sets there. Defaults are read from those classes, never written here. The argparse parser and the
TOML file (`_configfile.py`) are both built from this table: a flag's key in the file is its name
without the dashes (`--max-message-size` is `max_message_size`), and the options of a ready
handler are keys of the file's `[deliver]` table (`--relay-starttls` is `starttls` there).

Parsing gives a plain dict, destination -> value, holding only what was given; `_assemble.py`
turns it into a ServeCommand.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import inspect
import ipaddress
import math
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, NoReturn, final

from smtp_core import Config
from smtpkit.handlers import Handler, MaildirHandler, PrintHandler, RelayHandler, SinkHandler

from ._clierror import CLIError
from ._command import ServeCommand
from ._listen import Address, parse_address
from ._logging import LogFormat
from ._options import ServerOptions
from ._server import TRANSPORTS

__all__ = [
    "BY_DEST",
    "BY_KEY",
    "FLAGS",
    "LOG_LEVELS",
    "PROG",
    "READY_HANDLERS",
    "SWITCH",
    "ArgumentParser",
    "Flag",
    "Group",
    "Kind",
    "Target",
    "add_serve_arguments",
    "default_of",
    "format_address",
    "serve_parser",
]

PROG: Final = "smtpkit"
#: The port of --metrics HOST when none is given.
METRICS_PORT: Final = 9025
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

#: The ready handlers of --handler NAME (anything else is MODULE:ATTR).
READY_HANDLERS: Final[Mapping[str, type[Handler]]] = {
    "sink": SinkHandler,
    "print": PrintHandler,
    "maildir": MaildirHandler,
    "relay": RelayHandler,
}


class Target(enum.Enum):
    """Where a flag's value goes; each member's value is the class its field and default are
    read from (a handler option's class is the flag's handler)."""

    CONFIG = Config
    OPTIONS = ServerOptions
    COMMAND = ServeCommand
    #: An option (constructor parameter) of the ready handler named by `Flag.handler`.
    HANDLER = Handler


class Group(enum.Enum):
    """The sections of `smtpkit serve --help` and of docs/cli.md."""

    FILE = "configuration file"
    LISTENING = "listening"
    TRANSPORT = "transport"
    HANDLER = "handler"
    AUTH = "authentication"
    LIMITS = "protocol and limits"
    LOGGING = "logging"


def default_of(owner: type, name: str) -> Any:
    """The default of `owner`'s field `name`: a dataclass field's, or a constructor
    parameter's. Where the defaults of the flags come from."""
    if dataclasses.is_dataclass(owner):
        for f in dataclasses.fields(owner):
            if f.name == name:
                if f.default_factory is not dataclasses.MISSING:
                    return f.default_factory()
                return None if f.default is dataclasses.MISSING else f.default
        raise LookupError(f"{owner.__name__} has no field {name!r}")
    default = inspect.signature(owner).parameters[name].default
    return None if default is inspect.Parameter.empty else default


# ------------------------------------------------------------------------------------ kinds


@final
@dataclass(frozen=True)
class Kind:
    """How one value is read: `parse` turns the command line's text into the value (raising
    ArgumentTypeError), and a value from the file must be of one of the `toml` types (then its
    text goes through the same `parse`)."""

    #: None for a switch (a flag without a value; true or false in the file).
    parse: Callable[[str], object] | None
    toml: tuple[type, ...]
    metavar: str
    #: Writes a value back as it would be given on the command line.
    show: Callable[[Any], str] = str


def _integer(minimum: int) -> Kind:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            least = "at least 1" if minimum == 1 else f"{minimum} or more"
            raise argparse.ArgumentTypeError(f"must be {least}, not {value}")
        return value

    return Kind(parse, (int,), "N")


def _seconds(*, zero_ok: bool) -> Kind:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
            least = "0 or more" if zero_ok else "more than 0"
            raise argparse.ArgumentTypeError(f"must be {least} seconds, not {text}")
        return value

    return Kind(parse, (int, float), "SECONDS", show=lambda value: f"{value:g}")


def _choice(*choices: str, fold: bool = False) -> Kind:
    def parse(text: str) -> str:
        value = text.upper() if fold else text
        if value not in choices:
            raise argparse.ArgumentTypeError(
                f"invalid choice: {text!r} (choose from {', '.join(choices)})"
            )
        return value

    return Kind(parse, (str,), "|".join(choices))


def _enum(cls: type[enum.Enum]) -> Kind:
    """A member of `cls`, named by its value."""
    values = tuple(str(member.value) for member in cls)

    def parse(text: str) -> enum.Enum:
        try:
            return cls(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"invalid choice: {text!r} (choose from {', '.join(values)})"
            ) from None

    return Kind(parse, (str,), "|".join(values), show=lambda member: str(member.value))


def format_address(address: Address) -> str:
    """An address as --listen takes it: HOST:PORT, or [HOST]:PORT for IPv6."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _address(default_port: int) -> Kind:
    def parse(text: str) -> Address:
        if not text.strip():
            raise argparse.ArgumentTypeError("empty address: expected HOST:PORT")
        if text.strip().endswith(":"):
            raise argparse.ArgumentTypeError(f"no port after the colon in {text!r}")
        try:
            return parse_address(text, default_port)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return Kind(parse, (str,), "HOST:PORT", show=format_address)


def _text(metavar: str) -> Kind:
    def parse(text: str) -> str:
        if not text:
            raise argparse.ArgumentTypeError("empty")
        return text

    return Kind(parse, (str,), metavar)


def _network() -> Kind:
    def parse(text: str) -> str:
        try:
            return str(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return Kind(parse, (str,), "CIDR")


SWITCH: Final = Kind(None, (bool,), "")
COUNT: Final = _integer(1)
COUNT_OR_ZERO: Final = _integer(0)
SECONDS: Final = _seconds(zero_ok=False)
SECONDS_OR_ZERO: Final = _seconds(zero_ok=True)
FILE: Final = _text("FILE")


# ------------------------------------------------------------------------------------ flags


@final
@dataclass(frozen=True)
class Flag:
    """One flag of `smtpkit serve`, and its key in the configuration file."""

    name: str
    kind: Kind
    group: Group
    help: str
    #: Where the value goes; None for the flags the assembler reads itself (--tls-cert,
    #: --auth-file, --config...), whose default is "not given".
    target: Target | None = None
    #: The field it sets there, when not named like the flag.
    field_name: str | None = None
    #: The ready handler (--handler NAME) this is an option of.
    handler: str | None = None
    #: Its key in the file (in [deliver] for a handler option), when not named like the flag;
    #: "" when it has none.
    file_key: str | None = None
    #: Repeatable; an array in the file.
    repeat: bool = False
    #: A --no-X switch: given, it sets the field X to False.
    invert: bool = False
    #: Makes the default when it is not the target field's (--hostname: the host's FQDN)...
    default_factory: Callable[[], Any] | None = None
    #: ... and says what it is in --help.
    default_text: str | None = None
    #: The name of its value in --help, when not its kind's.
    metavar: str | None = None

    @property
    def dest(self) -> str:
        """The name of its value: the flag without the dashes."""
        return self.name[2:].replace("-", "_")

    @property
    def field(self) -> str:
        return self.field_name or self.dest

    @property
    def key(self) -> str:
        """Its key in the configuration file ("" when it has none)."""
        return self.dest if self.file_key is None else self.file_key

    @property
    def owner(self) -> type | None:
        """The class its field and default belong to."""
        if self.target is Target.HANDLER:
            assert self.handler is not None
            return READY_HANDLERS[self.handler]
        return None if self.target is None else self.target.value

    @property
    def default(self) -> Any:
        """The value when the flag is not given, read from the target's field."""
        if self.default_factory is not None:
            return self.default_factory()
        owner = self.owner
        if owner is None:
            return None
        value = default_of(owner, self.field)
        return (not value) if self.invert else value

    def describe_default(self) -> str | None:
        """The default as --help shows it (None: nothing worth showing)."""
        if self.default_text is not None:
            return self.default_text
        value = self.default
        if value is None or value is False or value == ():
            return None
        if self.repeat:
            return " ".join(self.kind.show(item) for item in value)
        return self.kind.show(value)

    def value_of(self, given: Any) -> Any:
        """What the target field gets when the flag's value is `given`."""
        if self.repeat:
            return tuple(given)
        return (not given) if self.invert else given


def _flags() -> tuple[Flag, ...]:
    # --relay HOST alone means the relay handler's own default port.
    relay_port: int = default_of(RelayHandler, "port")
    return (
        Flag(
            "--config",
            _text("FILE.toml"),
            Group.FILE,
            "read the settings from a TOML file; flags given here win over it, and --handler "
            "replaces its [deliver] table",
            file_key="",
        ),
        # listening
        Flag(
            "--listen",
            _address(25),
            Group.LISTENING,
            "plain SMTP listener, repeatable; any --listen replaces the default; port 0 picks a "
            "free port (logged)",
            Target.OPTIONS,
            repeat=True,
        ),
        Flag(
            "--tls-listen",
            _address(465),
            Group.LISTENING,
            "implicit TLS (SMTPS) listener, repeatable; needs --tls-cert",
            Target.OPTIONS,
            repeat=True,
        ),
        Flag("--tls-cert", FILE, Group.LISTENING, "TLS certificate chain (PEM); offers STARTTLS"),
        Flag(
            "--tls-key", FILE, Group.LISTENING, "private key (PEM), if not in the --tls-cert file"
        ),
        Flag(
            "--proxy-protocol",
            SWITCH,
            Group.LISTENING,
            "every --listen and --tls-listen is behind a proxy that opens each connection with "
            "a PROXY header (v1 or v2, before TLS); needs --proxy-trusted",
        ),
        Flag(
            "--proxy-listen",
            _address(25),
            Group.LISTENING,
            "plain SMTP listener behind a proxy (PROXY header first), repeatable",
            repeat=True,
        ),
        Flag(
            "--proxy-tls-listen",
            _address(465),
            Group.LISTENING,
            "implicit TLS listener behind a proxy (PROXY header, then TLS), repeatable",
            repeat=True,
        ),
        Flag(
            "--proxy-trusted",
            _network(),
            Group.LISTENING,
            "network of the proxies, repeatable; a PROXY listener closes connections from "
            "anywhere else without a word",
            Target.OPTIONS,
            repeat=True,
        ),
        Flag(
            "--hostname",
            _text("NAME"),
            Group.LISTENING,
            "name in the greeting, the EHLO reply and Received",
            Target.CONFIG,
            default_factory=socket.getfqdn,
            default_text="the host's FQDN",
        ),
        Flag(
            "--user",
            _text("NAME"),
            Group.LISTENING,
            "drop root privileges to NAME after binding",
            Target.COMMAND,
        ),
        # transport
        Flag(
            "--transport",
            _choice(*TRANSPORTS),
            Group.TRANSPORT,
            "network side",
            Target.COMMAND,
        ),
        Flag(
            "--anyio-backend",
            _choice("asyncio", "trio"),
            Group.TRANSPORT,
            "event loop of --transport anyio",
            Target.OPTIONS,
        ),
        Flag(
            "--no-uvloop",
            SWITCH,
            Group.TRANSPORT,
            "use the stdlib asyncio loop even when uvloop is installed",
            Target.OPTIONS,
            field_name="uvloop",
            invert=True,
        ),
        Flag("--workers", COUNT, Group.TRANSPORT, "worker threads for hooks", Target.OPTIONS),
        Flag(
            "--processes",
            COUNT,
            Group.TRANSPORT,
            "server processes sharing the port (SO_REUSEPORT)",
            Target.COMMAND,
        ),
        # handler
        Flag(
            "--handler",
            _text("sink|print|maildir|relay|MODULE:ATTR"),
            Group.HANDLER,
            "what to do with mail: a ready handler, or your Handler class or factory",
            Target.COMMAND,
            file_key="",  # the file's [deliver] table
        ),
        Flag(
            "--maildir",
            _text("DIR"),
            Group.HANDLER,
            "Maildir folder of --handler maildir, relative to the current directory",
            Target.HANDLER,
            handler="maildir",
        ),
        Flag(
            "--maildir-per-recipient",
            SWITCH,
            Group.HANDLER,
            "--handler maildir: deliver into DIR/<recipient>/, one Maildir per recipient",
            Target.HANDLER,
            field_name="per_recipient",
            handler="maildir",
            file_key="per_recipient",
        ),
        Flag(
            "--dump",
            SWITCH,
            Group.HANDLER,
            "--handler print: print each whole message to stdout",
            Target.HANDLER,
            handler="print",
        ),
        Flag(
            "--relay",
            _address(relay_port),
            Group.HANDLER,
            f"smarthost of --handler relay (port {relay_port} if omitted)",
            Target.HANDLER,
            field_name="host",
            handler="relay",
            file_key="",  # `host` and `port` in [deliver]
        ),
        Flag(
            "--relay-starttls",
            _choice("opportunistic", "required", "off"),
            Group.HANDLER,
            "--handler relay: STARTTLS with the smarthost when offered, always, or never",
            Target.HANDLER,
            field_name="starttls",
            handler="relay",
            file_key="starttls",
        ),
        Flag(
            "--relay-auth",
            FILE,
            Group.HANDLER,
            "--handler relay: AUTH to the smarthost with the 'user:password' line of FILE",
            handler="relay",
            file_key="auth",
        ),
        Flag(
            "--relay-lmtp",
            SWITCH,
            Group.HANDLER,
            "--handler relay: speak LMTP to the smarthost (Dovecot's lmtp), one recipient per "
            "transaction",
            handler="relay",
            file_key="lmtp",
        ),
        Flag(
            "--relay-networks",
            _network(),
            Group.HANDLER,
            "clients that may relay to any domain, repeatable (replaces the default: loopback); "
            "authenticated clients may too",
            repeat=True,
        ),
        Flag(
            "--relay-domains",
            _text("DOMAIN"),
            Group.HANDLER,
            "domains anyone may send to through a relaying handler, repeatable",
            repeat=True,
        ),
        Flag(
            "--open-relay",
            SWITCH,
            Group.HANDLER,
            "relay for anyone to any domain (no relay control): for tests behind a firewall",
        ),
        # authentication
        Flag(
            "--auth-file",
            FILE,
            Group.AUTH,
            "offer AUTH PLAIN/LOGIN, checked against 'user:password' lines (plain or hashed)",
        ),
        Flag(
            "--auth-allow-plaintext",
            SWITCH,
            Group.AUTH,
            "offer AUTH without TLS too (for a local catcher)",
            Target.CONFIG,
        ),
        Flag(
            "--xclient-trusted",
            _network(),
            Group.AUTH,
            "clients that may send XCLIENT (Postfix's) to say who the real client is, "
            "repeatable; others are not offered it",
            Target.CONFIG,
            repeat=True,
        ),
        # protocol and limits
        Flag(
            "--lmtp", SWITCH, Group.LIMITS, "speak LMTP (RFC 2033) instead of SMTP", Target.CONFIG
        ),
        Flag(
            "--no-received-header",
            SWITCH,
            Group.LIMITS,
            "do not prepend a Received: header to each message",
            Target.OPTIONS,
            field_name="received_header",
            invert=True,
        ),
        Flag(
            "--bare-lf",
            _choice("reject", "normalize"),
            Group.LIMITS,
            "a message with a bare LF or CR: reject it (550 5.5.2) or normalize it to CRLF",
            Target.CONFIG,
            field_name="bare_line_endings",
        ),
        Flag(
            "--timeout",
            SECONDS,
            Group.LIMITS,
            "a command line must be complete within this time of its first byte; idle timeout",
            Target.OPTIONS,
        ),
        Flag(
            "--data-timeout",
            SECONDS,
            Group.LIMITS,
            "deadline for receiving one whole message",
            Target.OPTIONS,
        ),
        Flag(
            "--min-data-rate",
            _integer(0),
            Group.LIMITS,
            "message content must arrive at least this fast, on top of --data-timeout; 0 = off",
            Target.OPTIONS,
            metavar="BYTES_PER_S",
        ),
        Flag(
            "--hook-timeout",
            SECONDS,
            Group.LIMITS,
            "a hook running longer gets the client 451 4.3.0",
            Target.OPTIONS,
        ),
        Flag(
            "--stress-timeout",
            SECONDS,
            Group.LIMITS,
            "while over 80%% of the connection slots are in use, every deadline is at most this",
            Target.OPTIONS,
        ),
        Flag(
            "--grace-period",
            SECONDS_OR_ZERO,
            Group.LIMITS,
            "on SIGTERM, how long transactions in flight may take to finish",
            Target.OPTIONS,
        ),
        Flag(
            "--max-message-size",
            COUNT,
            Group.LIMITS,
            "largest message accepted (SIZE); larger get 552",
            Target.CONFIG,
            metavar="BYTES",
        ),
        Flag(
            "--spool-threshold",
            COUNT_OR_ZERO,
            Group.LIMITS,
            "message content stays in memory up to this size, then goes to a spool file",
            Target.OPTIONS,
            metavar="BYTES",
        ),
        Flag(
            "--spool-dir",
            _text("DIR"),
            Group.LIMITS,
            "where spool files go, in a folder per server process"
            " (default: smtpkit-spool-UID in the system temp dir)",
            Target.OPTIONS,
        ),
        Flag(
            "--spool-max-bytes",
            COUNT,
            Group.LIMITS,
            "disk all spool files may use; content past it gets 452 4.3.1",
            Target.OPTIONS,
            metavar="BYTES",
        ),
        Flag(
            "--max-recipients",
            COUNT,
            Group.LIMITS,
            "recipients per message; more get 452",
            Target.CONFIG,
        ),
        Flag(
            "--max-connections",
            COUNT,
            Group.LIMITS,
            "simultaneous connections; more get 421",
            Target.OPTIONS,
        ),
        Flag(
            "--max-per-ip",
            COUNT_OR_ZERO,
            Group.LIMITS,
            "simultaneous connections per client IP, loopback exempt; 0 = unlimited",
            Target.OPTIONS,
        ),
        # logging
        Flag(
            "--log-level",
            _choice(*LOG_LEVELS, fold=True),
            Group.LOGGING,
            "log to stderr from this level on (any case)",
            Target.COMMAND,
        ),
        Flag(
            "--log-format",
            _enum(LogFormat),
            Group.LOGGING,
            "one line of text per record, or one JSON object per line",
            Target.COMMAND,
        ),
        Flag(
            "--metrics",
            _address(METRICS_PORT),
            Group.LOGGING,
            "serve Prometheus metrics on http://HOST:PORT/metrics (needs smtpkit[metrics]; "
            f"port {METRICS_PORT} if omitted)",
            Target.COMMAND,
        ),
    )


FLAGS: Final = _flags()
BY_DEST: Final[Mapping[str, Flag]] = {flag.dest: flag for flag in FLAGS}
#: The server keys of the file's top level.
BY_KEY: Final[Mapping[str, Flag]] = {
    flag.key: flag for flag in FLAGS if flag.key and flag.handler is None
}

# --------------------------------------------------------------------------------- argparse


class ArgumentParser(argparse.ArgumentParser):
    """Raises CLIError instead of printing the usage and exiting, so errors are one line."""

    def error(self, message: str) -> NoReturn:
        raise CLIError(f"{message} (see '{self.prog} --help')")


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of FLAGS on `parser`. Absent flags leave no attribute (argparse.SUPPRESS), so
    what was given can be told from the defaults, and the file from the command line."""
    groups = {group: parser.add_argument_group(group.value) for group in Group}
    for flag in FLAGS:
        default = flag.describe_default()
        help_text = flag.help if default is None else f"{flag.help} (default: {default})"
        options: dict[str, Any] = {"dest": flag.dest, "default": argparse.SUPPRESS}
        if flag.kind is SWITCH:
            options["action"] = "store_true"
        else:
            options.update(type=flag.kind.parse, metavar=flag.metavar or flag.kind.metavar)
            if flag.repeat:
                options["action"] = "append"
        groups[flag.group].add_argument(flag.name, help=help_text, **options)


def serve_parser() -> ArgumentParser:
    """`smtpkit serve` on its own (the command line's `serve` sub-command is the same)."""
    parser = ArgumentParser(prog=f"{PROG} serve", allow_abbrev=False)
    add_serve_arguments(parser)
    return parser
