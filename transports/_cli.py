"""The `smtpkit` command line (also `python -m smtpkit`). DESIGN.md section 5 is its contract.

    smtpkit serve [options]           run a server; with no options, a local mail catcher
    smtpkit hash-password [--scheme]  hash a password for --auth-file

Parsing is separate from running: `parse_serve(argv)` turns the arguments into a `ServeCommand`
(handler factory, ServerOptions, transport, user) without binding anything, and `run_serve()`
serves it. Every error is one line, `smtpkit: error: ...`, and exit status 2 (bad command line
or configuration) or 1 (failure while starting or serving); never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import getpass
import importlib
import logging
import math
import os
import signal
import socket
import ssl
import sys
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn, final

from smtp_core import Config
from smtpkit.handlers import (
    Handler,
    HandlerFactory,
    MaildirHandler,
    PasswordFile,
    PrintHandler,
    RelayHandler,
    SinkHandler,
    hash_password,
    with_password_file,
)
from smtpkit.handlers._authfile import SCHEMES

from ._listen import Address, make_ssl_context, parse_address
from ._options import App, ServerOptions
from ._processes import run_processes
from ._server import TRANSPORTS, Server

__all__ = ["CLIError", "ServeCommand", "build_parser", "main", "parse_serve", "run_serve"]

log = logging.getLogger("smtpkit")

PROG = "smtpkit"
DEFAULT_LISTEN: tuple[Address, ...] = (("127.0.0.1", 1025),)
BUILTIN_HANDLERS = ("sink", "print", "maildir", "relay")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: The benchmarks pick the asyncio transport's event loop with SMTPKIT_LOOP=asyncio|uvloop.
LOOP_ENV = "SMTPKIT_LOOP"

#: Exit statuses.
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class CLIError(Exception):
    """A one-line error for the user: printed as `smtpkit: error: MESSAGE`, then exit `status`."""

    def __init__(self, message: str, status: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.status = status


@final
@dataclass(frozen=True)
class ServeCommand:
    """What `smtpkit serve ARGS` means, ready to run: `Server(factory, options, ...)`."""

    factory: HandlerFactory
    options: ServerOptions
    transport: str = "asyncio"
    user: str | None = None
    #: Server processes sharing the listeners (SO_REUSEPORT).
    processes: int = 1
    log_level: str = "INFO"
    #: The handler as given to --handler, for the startup log line.
    handler_name: str = "maildir"
    #: The Maildir folder to create before serving (--handler maildir), absolute.
    maildir: Path | None = None
    #: Things worth a warning at startup (logging is not set up while parsing).
    warnings: tuple[str, ...] = field(default=())


# --------------------------------------------------------------------------------- parsing


class _Parser(argparse.ArgumentParser):
    """Raises CLIError instead of printing the usage and exiting, so errors are one line."""

    def error(self, message: str) -> NoReturn:
        raise CLIError(f"{message} (see '{self.prog} --help')")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" where there is a default worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, []) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def _seconds(*, zero_ok: bool) -> Callable[[str], float]:
    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
            raise argparse.ArgumentTypeError(
                f"must be {'0 or more' if zero_ok else 'more than 0'} seconds, not {text}"
            )
        return value

    return convert


def _address(default_port: int) -> Callable[[str], Address]:
    def convert(text: str) -> Address:
        try:
            return parse_address(text, default_port)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def _log_level(text: str) -> str:
    level = text.upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"one of {', '.join(LOG_LEVELS)}, not {text!r}")
    return level


def build_parser() -> argparse.ArgumentParser:
    """The whole `smtpkit` command line."""
    parser = _Parser(
        prog=PROG,
        description="smtpkit: SMTP servers from a sans-IO engine, pluggable transports and "
        "small handlers.",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    serve = commands.add_parser(
        "serve",
        help="run an SMTP server (with no options: a mail catcher on 127.0.0.1:1025)",
        description="Run an SMTP server. With no options: a local mail catcher on "
        "127.0.0.1:1025 that stores every message in ./maildir.",
        allow_abbrev=False,
        formatter_class=_HelpFormatter,
    )
    _add_serve_arguments(serve)

    hasher = commands.add_parser(
        "hash-password",
        help="hash a password for --auth-file",
        description="Print the hashed form of a password, for a 'user:HASH' line of an "
        "--auth-file. The password is read from standard input (its first line), or "
        "prompted for on a terminal.",
        allow_abbrev=False,
    )
    hasher.add_argument(
        "--scheme",
        choices=SCHEMES,
        default=SCHEMES[0],
        help="hash scheme (default %(default)s)",
    )
    return parser


def _add_serve_arguments(p: argparse.ArgumentParser) -> None:
    net = p.add_argument_group("listening")
    net.add_argument(
        "--listen",
        action="append",
        type=_address(25),
        metavar="HOST:PORT",
        help="plain SMTP listener, repeatable; any --listen replaces the default "
        "127.0.0.1:1025; port 0 picks a free port (logged)",
    )
    net.add_argument(
        "--tls-listen",
        action="append",
        type=_address(465),
        default=[],
        metavar="HOST:PORT",
        help="implicit TLS (SMTPS) listener, repeatable; needs --tls-cert",
    )
    net.add_argument(
        "--tls-cert", metavar="FILE", help="TLS certificate chain (PEM); offers STARTTLS"
    )
    net.add_argument(
        "--tls-key", metavar="FILE", help="private key (PEM), if not in the --tls-cert file"
    )
    net.add_argument(
        "--hostname",
        metavar="NAME",
        help="name in the greeting, the EHLO reply and Received (default: the host's FQDN)",
    )
    net.add_argument("--user", metavar="NAME", help="drop root privileges to NAME after binding")

    run = p.add_argument_group("transport")
    run.add_argument(
        "--transport", choices=tuple(TRANSPORTS), default="asyncio", help="network side"
    )
    run.add_argument(
        "--anyio-backend",
        choices=("asyncio", "trio"),
        help="event loop of --transport anyio (default asyncio)",
    )
    run.add_argument(
        "--no-uvloop",
        action="store_true",
        help="use the stdlib asyncio loop even when uvloop is installed",
    )
    run.add_argument(
        "--workers", type=_positive_int, default=32, metavar="N", help="worker threads for hooks"
    )
    run.add_argument(
        "--processes",
        type=_positive_int,
        default=1,
        metavar="N",
        help="server processes sharing the port (SO_REUSEPORT), default 1",
    )

    hand = p.add_argument_group("handler")
    hand.add_argument(
        "--handler",
        default="maildir",
        metavar="sink|print|maildir|relay|MODULE:ATTR",
        help="what to do with mail: a ready handler, or your Handler class or factory",
    )
    hand.add_argument(
        "--maildir", metavar="DIR", help="Maildir folder of --handler maildir (default ./maildir)"
    )
    hand.add_argument(
        "--maildir-per-recipient",
        action="store_true",
        help="--handler maildir: deliver into DIR/<recipient>/, one Maildir per recipient",
    )
    hand.add_argument(
        "--dump", action="store_true", help="--handler print: print each whole message to stdout"
    )
    hand.add_argument(
        "--relay", type=_address(25), metavar="HOST:PORT", help="smarthost of --handler relay"
    )
    hand.add_argument(
        "--relay-starttls",
        choices=("opportunistic", "required", "off"),
        metavar="opportunistic|required|off",
        help="--handler relay: STARTTLS with the smarthost when offered (default), always, "
        "or never",
    )
    hand.add_argument(
        "--relay-auth",
        metavar="FILE",
        help="--handler relay: AUTH to the smarthost with the 'user:password' line of FILE",
    )

    auth = p.add_argument_group("authentication")
    auth.add_argument(
        "--auth-file",
        metavar="FILE",
        help="offer AUTH PLAIN/LOGIN, checked against 'user:password' lines (plain or hashed)",
    )
    auth.add_argument(
        "--auth-allow-plaintext",
        action="store_true",
        help="offer AUTH without TLS too (for a local catcher)",
    )

    smtp = p.add_argument_group("protocol and limits")
    smtp.add_argument("--lmtp", action="store_true", help="speak LMTP (RFC 2033) instead of SMTP")
    smtp.add_argument(
        "--no-received-header",
        action="store_true",
        help="do not prepend a Received: header to each message",
    )
    smtp.add_argument(
        "--bare-lf",
        choices=("reject", "normalize"),
        default="reject",
        help="a message with a bare LF or CR: reject it (550 5.5.2) or normalize it to CRLF",
    )
    smtp.add_argument(
        "--timeout",
        type=_seconds(zero_ok=False),
        default=300.0,
        metavar="SECONDS",
        help="idle timeout per command",
    )
    smtp.add_argument(
        "--data-timeout",
        type=_seconds(zero_ok=False),
        default=600.0,
        metavar="SECONDS",
        help="deadline for receiving one whole message",
    )
    smtp.add_argument(
        "--grace-period",
        type=_seconds(zero_ok=True),
        default=30.0,
        metavar="SECONDS",
        help="on SIGTERM, how long transactions in flight may take to finish",
    )
    smtp.add_argument(
        "--max-message-size",
        type=_positive_int,
        default=33554432,
        metavar="BYTES",
        help="largest message accepted (SIZE); larger get 552",
    )
    smtp.add_argument(
        "--max-recipients",
        type=_positive_int,
        default=1000,
        metavar="N",
        help="recipients per message; more get 452",
    )
    smtp.add_argument(
        "--max-connections",
        type=_positive_int,
        default=1000,
        metavar="N",
        help="simultaneous connections; more get 421",
    )
    smtp.add_argument(
        "--max-per-ip",
        type=_non_negative_int,
        default=50,
        metavar="N",
        help="simultaneous connections per client IP, loopback exempt; 0 = unlimited",
    )

    p.add_argument(
        "--log-level",
        type=_log_level,
        default="INFO",
        metavar="LEVEL",
        help=f"log to stderr from this level on: {', '.join(LOG_LEVELS)}",
    )


def parse_serve(argv: Sequence[str], *, environ: Mapping[str, str] | None = None) -> ServeCommand:
    """`smtpkit serve ARGV` as a ServeCommand; CLIError if anything is wrong.

    Binds nothing and writes nothing. It does import a --handler MODULE:ATTR, read the
    --auth-file and load the TLS certificate, so that their errors come before serving.
    """
    args = build_parser().parse_args(["serve", *argv])
    return serve_command(args, environ=os.environ if environ is None else environ)


def serve_command(args: argparse.Namespace, *, environ: Mapping[str, str]) -> ServeCommand:
    """The ServeCommand of parsed `serve` arguments."""
    warnings: list[str] = []
    if args.anyio_backend is not None and args.transport != "anyio":
        raise CLIError("--anyio-backend is for --transport anyio")
    if args.tls_key and not args.tls_cert:
        raise CLIError("--tls-key needs --tls-cert")
    if args.tls_listen and not args.tls_cert:
        raise CLIError("--tls-listen needs --tls-cert (and --tls-key)")
    if args.auth_file and not args.tls_cert and not args.auth_allow_plaintext:
        raise CLIError(
            "--auth-file needs --tls-cert, as AUTH is offered over TLS only, "
            "or --auth-allow-plaintext"
        )

    factory, maildir = _handler_factory(args)
    if args.auth_file:
        if _overrides_auth(factory):
            warnings.append(f"--auth-file replaces the auth() of --handler {args.handler}")
        factory = with_password_file(factory, _load_password_file(args.auth_file))
    elif args.auth_allow_plaintext and args.handler in BUILTIN_HANDLERS:
        warnings.append("--auth-allow-plaintext does nothing without --auth-file")
    user = _check_user(args.user) if args.user else None
    ssl_context = _ssl_context(args.tls_cert, args.tls_key) if args.tls_cert else None

    hostname = args.hostname if args.hostname is not None else socket.getfqdn()
    uvloop = not args.no_uvloop
    if not args.no_uvloop and environ.get(LOOP_ENV, "").strip().lower() == "asyncio":
        uvloop = False
    try:
        config = Config(
            hostname=hostname,
            max_message_size=args.max_message_size,
            max_recipients=args.max_recipients,
            bare_line_endings=args.bare_lf,
            lmtp=args.lmtp,
            auth_allow_plaintext=args.auth_allow_plaintext,
        )
    except ValueError as exc:
        raise CLIError(_hostname_hint(str(exc), args.hostname)) from None
    try:
        options = ServerOptions(
            config=config,
            listen=tuple(args.listen) if args.listen else DEFAULT_LISTEN,
            tls_listen=tuple(args.tls_listen),
            ssl_context=ssl_context,
            timeout=args.timeout,
            data_timeout=args.data_timeout,
            grace_period=args.grace_period,
            max_connections=args.max_connections,
            max_per_ip=args.max_per_ip,
            workers=args.workers,
            received_header=not args.no_received_header,
            reuse_port=args.processes > 1,
            anyio_backend=args.anyio_backend or "asyncio",
            uvloop=uvloop,
        )
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    return ServeCommand(
        factory=factory,
        options=options,
        transport=args.transport,
        user=user,
        processes=args.processes,
        log_level=args.log_level,
        handler_name=args.handler,
        maildir=maildir,
        warnings=tuple(warnings),
    )


def _overrides_auth(factory: HandlerFactory) -> bool:
    """True if the factory is a Handler class (or a partial of one) with an auth() of its own;
    for other factories, we cannot tell without making a handler."""
    cls = getattr(factory, "func", factory)
    return isinstance(cls, type) and issubclass(cls, Handler) and cls.auth is not Handler.auth


def _hostname_hint(message: str, given: str | None) -> str:
    if given is None and "hostname" in message:
        return f"{message}: the host's name is unusable, give one with --hostname"
    return message


def _handler_factory(args: argparse.Namespace) -> tuple[HandlerFactory, Path | None]:
    """The factory for --handler, and the Maildir folder to create if it is maildir."""
    name: str = args.handler
    if name != "relay":
        for flag in ("relay", "relay_starttls", "relay_auth"):
            if getattr(args, flag) is not None:
                raise CLIError(f"--{flag.replace('_', '-')} is for --handler relay")
    if args.maildir is not None and name != "maildir":
        raise CLIError("--maildir is for --handler maildir")
    if args.maildir_per_recipient and name != "maildir":
        raise CLIError("--maildir-per-recipient is for --handler maildir")
    if args.dump and name != "print":
        raise CLIError("--dump is for --handler print")
    if name == "sink":
        return SinkHandler, None
    if name == "print":
        return (functools.partial(PrintHandler, dump=True) if args.dump else PrintHandler), None
    if name == "maildir":
        path = Path(args.maildir if args.maildir is not None else "maildir").absolute()
        if path.exists() and not path.is_dir():
            raise CLIError(f"--maildir {path} exists and is not a directory")
        if args.maildir_per_recipient:
            return functools.partial(MaildirHandler, str(path), per_recipient=True), path
        return functools.partial(MaildirHandler, str(path)), path
    if name == "relay":
        return _relay_factory(args), None
    if ":" in name:
        return import_handler(name), None
    raise CLIError(
        f"unknown handler {name!r}: one of {', '.join(BUILTIN_HANDLERS)}, or MODULE:ATTR"
    )


def _relay_factory(args: argparse.Namespace) -> HandlerFactory:
    """--handler relay --relay HOST:PORT [--relay-starttls MODE] [--relay-auth FILE]."""
    if args.relay is None:
        raise CLIError("--handler relay needs --relay HOST:PORT")
    host, port = args.relay
    username = password = None
    if args.relay_auth is not None:
        username, password = _relay_credentials(args.relay_auth)
    return functools.partial(
        RelayHandler,
        host,
        port,
        starttls=args.relay_starttls or "opportunistic",
        username=username,
        password=password,
        local_hostname=args.hostname,  # our EHLO name upstream; None: this host's FQDN
    )


def _relay_credentials(path: str) -> tuple[str, str]:
    """The first `user:password` line of --relay-auth FILE (blank lines, # comments skipped)."""
    try:
        with open(path, encoding="utf-8-sig") as file:
            lines = file.read().splitlines()
    except OSError as exc:
        raise CLIError(f"--relay-auth {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise CLIError(f"--relay-auth {path}: not UTF-8 text ({exc.reason})") from None
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        user, sep, password = line.partition(":")
        if not sep or not user.strip() or not password:
            raise CLIError(f"--relay-auth {path}: expected a 'user:password' line")
        return user.strip(), password
    raise CLIError(f"--relay-auth {path}: no 'user:password' line")


def import_handler(spec: str) -> HandlerFactory:
    """The handler class or factory named by "MODULE:ATTR" (ATTR may be dotted).

    The current directory comes first on sys.path, as with uvicorn, so that
    `smtpkit serve --handler mymodule:MyHandler` finds ./mymodule.py.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise CLIError(f"--handler {spec!r}: expected MODULE:ATTR")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name + ".").startswith(exc.name + "."):
            raise CLIError(f"--handler {spec!r}: no module named {module_name!r}") from None
        raise CLIError(f"--handler {spec!r}: importing {module_name}: {exc}") from None
    except Exception as exc:
        raise CLIError(
            f"--handler {spec!r}: importing {module_name} failed: {type(exc).__name__}: {exc}"
        ) from None
    target: object = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise CLIError(f"--handler {spec!r}: {module_name} has no attribute {attr!r}") from None
    if isinstance(target, type):
        if not issubclass(target, Handler):
            raise CLIError(f"--handler {spec!r}: {attr} is a class but not a Handler subclass")
        return target
    if isinstance(target, Handler):
        raise CLIError(
            f"--handler {spec!r}: {attr} is a Handler instance; give its class or a factory "
            "(one handler per connection)"
        )
    if not callable(target):
        raise CLIError(f"--handler {spec!r}: {attr} is neither a Handler class nor a factory")
    factory: HandlerFactory = target
    return factory


def _load_password_file(path: str) -> PasswordFile:
    try:
        return PasswordFile.load(path)
    except OSError as exc:
        raise CLIError(f"--auth-file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise CLIError(f"--auth-file {path}: not UTF-8 text ({exc.reason})") from None
    except ValueError as exc:
        raise CLIError(f"--auth-file {exc}") from None


def _ssl_context(cert: str, key: str | None) -> ssl.SSLContext:
    for flag, path in (("--tls-cert", cert), ("--tls-key", key)):
        if path is not None:
            try:
                with open(path, "rb"):
                    pass
            except OSError as exc:
                raise CLIError(f"{flag} {path}: {exc.strerror or exc}") from None
    try:
        return make_ssl_context(cert, key)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            detail = "the key does not match the certificate"
        else:
            detail = "expected a PEM certificate chain and a PEM private key"
        files = f"{cert} and key {key}" if key else f"{cert} (no --tls-key: key in the same file)"
        raise CLIError(f"cannot load TLS certificate {files}: {detail}") from None
    except OSError as exc:
        raise CLIError(f"cannot load TLS certificate {cert}: {exc.strerror or exc}") from None


def _check_user(name: str) -> str:
    try:
        import pwd
    except ImportError:  # pragma: no cover - not on POSIX
        raise CLIError("--user needs a POSIX system") from None
    try:
        pwd.getpwnam(name)
    except KeyError:
        raise CLIError(f"--user {name}: no such user") from None
    return name


# --------------------------------------------------------------------------------- running


def configure_logging(level: str) -> None:
    """Log to stderr, one line per record."""
    logging.basicConfig(level=level, stream=sys.stderr, format=LOG_FORMAT, force=True)


def run_serve(command: ServeCommand) -> int:
    """Serve until SIGTERM or SIGINT; the exit status. CLIError on failure."""
    for warning in command.warnings:
        log.warning("%s", warning)
    if command.processes > 1:
        return _serve_processes(command)
    if command.user is not None and os.geteuid() != 0:
        import pwd

        if pwd.getpwnam(command.user).pw_uid != os.geteuid():
            raise CLIError(f"--user {command.user}: only root can switch users")
    if command.maildir is not None:
        _prepare_maildir(command.maildir, command.user, root_only=_per_recipient(command))
    _check_factory(command)
    try:
        server = Server(
            command.factory, command.options, transport=command.transport, user=command.user
        )
    except ValueError as exc:  # Runner.check refusing the handler or options
        raise CLIError(str(exc)) from None
    except ImportError as exc:
        raise CLIError(
            f"the {command.transport} transport is not available: {exc}", EXIT_FAILURE
        ) from None
    _log_start(command)
    # Server.serve_forever() turns SIGTERM into a graceful stop once it runs; until then (and
    # once it is over), SIGTERM just ends the program quietly, with status 0.
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        server.serve_forever()
    except _Terminated:
        log.info("received SIGTERM before serving, exiting")
    except OSError as exc:
        log.debug("serving failed", exc_info=True)
        raise CLIError(exc.strerror or str(exc), EXIT_FAILURE) from None
    except Exception as exc:
        log.debug("serving failed", exc_info=True)
        raise CLIError(
            f"the {command.transport} transport failed: {type(exc).__name__}: {exc} "
            "(--log-level DEBUG shows the traceback)",
            EXIT_FAILURE,
        ) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    return EXIT_OK


class _Terminated(Exception):
    """SIGTERM arrived while starting up."""


def _terminate(signum: int, frame: types.FrameType | None) -> None:
    raise _Terminated


def _serve_processes(command: ServeCommand) -> int:
    """--processes N > 1: N forked processes on the same ports (SO_REUSEPORT)."""
    options = command.options

    def child(listen: tuple[Address, ...], tls_listen: tuple[Address, ...]) -> int:
        one = dataclasses.replace(
            command,
            processes=1,
            options=dataclasses.replace(
                options, listen=listen, tls_listen=tls_listen, reuse_port=True
            ),
        )
        try:
            return run_serve(one)
        except CLIError as exc:
            print(f"smtpkit: error: {exc}", file=sys.stderr)
            return exc.status

    try:
        return run_processes(command.processes, options.listen, options.tls_listen, child)
    except OSError as exc:
        raise CLIError(f"cannot listen: {exc.strerror or exc}", EXIT_FAILURE) from None


def _per_recipient(command: ServeCommand) -> bool:
    factory = command.factory
    return isinstance(factory, functools.partial) and bool(factory.keywords.get("per_recipient"))


def _prepare_maildir(path: Path, user: str | None, *, root_only: bool = False) -> None:
    """Create the Maildir now, so a bad path fails before serving; with --user as root, hand
    the folders it creates to that user, who will write into them. With `root_only` (one
    Maildir per recipient, made on first delivery) only the root folder."""
    subs = () if root_only else ("tmp", "new", "cur")
    created = [p for p in (path, *(path / sub for sub in subs)) if not p.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
        for sub in subs:
            (path / sub).mkdir(parents=True, exist_ok=True)
        if user is not None and created and os.geteuid() == 0:
            import pwd

            entry = pwd.getpwnam(user)
            for folder in created:
                os.chown(folder, entry.pw_uid, entry.pw_gid)
    except OSError as exc:
        raise CLIError(f"--maildir {path}: {exc.strerror or exc}", EXIT_FAILURE) from None


def _check_factory(command: ServeCommand) -> None:
    """Make sure the factory makes Handlers, before any client connects."""
    try:
        cls = App(command.factory, command.options).handler_class()
    except Exception as exc:
        log.debug("handler factory failed", exc_info=True)
        raise CLIError(
            f"--handler {command.handler_name}: making a handler failed: "
            f"{type(exc).__name__}: {exc}"
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, Handler)):
        raise CLIError(
            f"--handler {command.handler_name}: the factory returned {cls.__name__}, not a Handler"
        )


def _log_start(command: ServeCommand) -> None:
    o = command.options
    handler = command.handler_name
    if command.maildir is not None:
        handler += f" ({command.maildir})"
    extras = []
    if o.ssl_context is not None:
        extras.append("STARTTLS")
    if o.config.lmtp:
        extras.append("LMTP")
    if o.config.auth_allow_plaintext:
        extras.append("AUTH without TLS")
    transport = command.transport
    if transport == "anyio":
        transport += f" ({o.anyio_backend})"
    log.info(
        "smtpkit %s starting: transport %s, handler %s, hostname %s%s",
        _version(),
        transport,
        handler,
        o.config.hostname,
        "".join(f", {extra}" for extra in extras),
    )


# --------------------------------------------------------------------------------- hash-password


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
    return EXIT_OK


# --------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    """The `smtpkit` console script; returns the exit status."""
    try:
        args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
        if args.command == "serve":
            command = serve_command(args, environ=os.environ)
            configure_logging(command.log_level)
            return run_serve(command)
        if args.command == "hash-password":
            return run_hash_password(args)
        raise CLIError(f"a command is needed: serve or hash-password (see '{PROG} --help')")
    except CLIError as exc:
        _error(str(exc))
        return exc.status
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    except KeyboardInterrupt:
        return 130


def _error(message: str) -> None:
    text = " ".join(message.split())  # one line, whatever the message held
    print(f"{PROG}: error: {text}", file=sys.stderr, flush=True)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("smtpkit")
    except Exception:
        return "(not installed)"
