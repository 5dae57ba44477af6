"""The `smtpkit` command line (also `python -m smtpkit`): its commands, and running a server.

    smtpkit serve [options]           run a server; with no options, a local mail catcher
    smtpkit check-config FILE.toml    check a configuration file, one line per problem
    smtpkit hash-password [--scheme]  hash a password for --auth-file

The flags are a table (`_flags.py`); `_assemble.parse_serve()` turns them and a --config file
into a `ServeCommand` without binding anything; `run_serve()` here serves it. DESIGN.md section 5
is the contract. Every error is one line, `smtpkit: error: ...`, and exit status 2 (bad command
line or configuration) or 1 (failure while starting or serving); never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, final

from smtpkit.handlers import Handler, MaildirHandler

from . import _hash_password
from ._assemble import assemble, parse_serve, settings_of
from ._clierror import CLIError, Exit
from ._command import ServeCommand
from ._configfile import read_config
from ._flags import PROG, ArgumentParser, add_serve_arguments, format_address
from ._listen import Address
from ._logging import LogChannel, LogFormat, log_to_stderr
from ._observer import Observer
from ._options import App
from ._processes import run_processes
from ._reload import reload_server
from ._server import Server

if TYPE_CHECKING:
    from ._metrics import Metrics, MetricsEndpoint

__all__ = [
    "CLIError",
    "Exit",
    "ServeCommand",
    "build_parser",
    "check_config",
    "main",
    "parse_serve",
    "run_serve",
]

log = logging.getLogger("smtpkit")


class _HelpFormatter(argparse.HelpFormatter):
    """Wider help columns: the flags are long."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)


def build_parser() -> argparse.ArgumentParser:
    """The whole `smtpkit` command line."""
    parser = ArgumentParser(
        prog=PROG,
        description="smtpkit: SMTP servers from a sans-IO engine, pluggable transports and "
        "small handlers.",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)
    serve = commands.add_parser(
        "serve",
        help="run an SMTP server (with no options: a mail catcher on 127.0.0.1:1025)",
        description="Run an SMTP server. With no options: a local mail catcher on "
        "127.0.0.1:1025 that stores every message in ./maildir.",
        allow_abbrev=False,
        formatter_class=_HelpFormatter,
    )
    add_serve_arguments(serve)
    check = commands.add_parser(
        "check-config",
        help="check a configuration file (one line per problem)",
        description="Check a --config file as 'smtpkit serve --config FILE' would, binding "
        "nothing: print one line per problem (FILE:LINE: KEY: WHY) and exit 1 if there is "
        "any, 0 if there is none.",
        allow_abbrev=False,
    )
    check.add_argument("file", metavar="FILE.toml", help="the configuration file")
    hasher = commands.add_parser(
        "hash-password",
        help="hash a password for --auth-file",
        description=_hash_password.DESCRIPTION,
        allow_abbrev=False,
    )
    _hash_password.add_arguments(hasher)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The `smtpkit` console script; returns the exit status."""
    try:
        args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
        if args.command == "serve":
            # From here on a SIGHUP is a reload, even before the server can do one.
            previous = signal.signal(signal.SIGHUP, _EarlyReload())
            try:
                given = {k: v for k, v in vars(args).items() if k != "command"}
                command = assemble(settings_of(given), os.environ)
                return run_serve_logging(
                    command, reload=lambda: assemble(settings_of(given), os.environ)
                )
            finally:
                signal.signal(signal.SIGHUP, previous)
        if args.command == "check-config":
            return check_config(args.file)
        if args.command == "hash-password":
            return _hash_password.run_hash_password(args)
        raise CLIError(
            f"a command is needed: serve, check-config or hash-password (see '{PROG} --help')"
        )
    except CLIError as exc:
        _error(str(exc))
        return exc.status
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else Exit.OK
    except KeyboardInterrupt:
        return 130


def check_config(path: str) -> int:
    """`smtpkit check-config FILE`: print each problem of the file, one per line, on stdout;
    exit 1 if there is any. Past the file's own problems, it is checked as `serve --config`
    would (the handler imported, the files read), binding and creating nothing."""
    problems = [problem.format(path) for problem in read_config(path).problems]
    if not problems:
        try:
            assemble(settings_of({"config": path}), os.environ)
        except CLIError as exc:
            problems.append(" ".join(str(exc).split()))
    for problem in problems:
        print(problem)
    if problems:
        return Exit.FAILURE
    print(f"{path}: ok")
    return Exit.OK


# --------------------------------------------------------------------------------- running


def configure_logging(level: str, log_format: LogFormat = LogFormat.TEXT) -> LogChannel:
    """Log to stderr, one line per record, through a bounded queue (`log_to_stderr`), so that
    a full or slow stderr never stalls serving. Replaces the root logger's handlers."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    return log_to_stderr(level, log_format.formatter(), logger=root)


def run_serve_logging(
    command: ServeCommand,
    *,
    reload: Callable[[], ServeCommand] | None = None,
    observer: Observer | None = None,
) -> int:
    """`run_serve()` with its log on stderr, flushed before any error line is printed."""
    channel = configure_logging(command.log_level, command.log_format)
    try:
        return run_serve(command, reload=reload, observer=observer)
    finally:
        channel.close()


def run_serve(
    command: ServeCommand,
    *,
    reload: Callable[[], ServeCommand] | None = None,
    observer: Observer | None = None,
) -> int:
    """Serve until SIGTERM or SIGINT; the exit status. CLIError on failure.

    On SIGHUP, `reload()` gives the command anew (the file read again) and the server takes
    it (`_reload.py`). `observer` is told what the server does; without one, `--metrics`
    makes one and serves it."""
    for warning in command.warnings:
        log.warning("%s", warning)
    if command.processes > 1:
        return _serve_processes(command, reload)
    owner = None if command.user is None else _owner(command.user)
    if command.maildir is not None:
        _prepare_maildir(command, owner)
    _check_factory(command)
    metrics = None
    if observer is None and command.metrics is not None:
        from ._metrics import Metrics

        observer = metrics = Metrics()
    try:
        server = Server(
            command.factory,
            command.options,
            transport=command.transport,
            user=command.user,
            observer=observer,
        )
    except ValueError as exc:  # Runner.check refusing the handler or options
        raise CLIError(str(exc)) from None
    except ImportError as exc:
        raise CLIError(
            f"the {command.transport} transport is not available: {exc}", Exit.FAILURE
        ) from None
    endpoint = None  # bound before --user drops root
    if metrics is not None and command.metrics is not None:
        endpoint = _serve_metrics(command.metrics, metrics)
    _log_start(command)
    # Server.serve_forever() turns SIGTERM into a graceful stop once it runs; until then (and
    # once it is over), SIGTERM just ends the program quietly, with status 0.
    previous = signal.signal(signal.SIGTERM, _terminate)
    previous_hup = signal.getsignal(signal.SIGHUP)
    if reload is not None:
        on_hup = _reloader(server, command, reload)
        signal.signal(signal.SIGHUP, on_hup)
        if isinstance(previous_hup, _EarlyReload) and previous_hup.pending:
            previous_hup.pending = False
            on_hup(signal.SIGHUP, None)
    try:
        server.serve_forever()
    except _Terminated:
        log.info("received SIGTERM before serving, exiting")
    except OSError as exc:
        log.debug("serving failed", exc_info=True)
        raise CLIError(exc.strerror or str(exc), Exit.FAILURE) from None
    except Exception as exc:
        log.debug("serving failed", exc_info=True)
        raise CLIError(
            f"the {command.transport} transport failed: {type(exc).__name__}: {exc} "
            "(--log-level DEBUG shows the traceback)",
            Exit.FAILURE,
        ) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGHUP, previous_hup)
        if endpoint is not None:
            endpoint.close()
    return Exit.OK


class _Terminated(Exception):
    """SIGTERM arrived while starting up."""


def _terminate(signum: int, frame: types.FrameType | None) -> None:
    raise _Terminated


def _serve_processes(command: ServeCommand, reload: Callable[[], ServeCommand] | None) -> int:
    """--processes N > 1: N forked processes on the same ports (SO_REUSEPORT). With
    --metrics, the children count into files of a private folder (prometheus_client's
    multiprocess mode) and the parent serves their sum."""
    options = command.options

    def child(listen: tuple[Address, ...], tls_listen: tuple[Address, ...]) -> int:
        def one(command: ServeCommand) -> ServeCommand:
            o = command.options
            given = (*o.listen, *o.tls_listen)  # port 0 is resolved: so are the PROXY ones
            proxied = zip(given, (*listen, *tls_listen), strict=True)
            return dataclasses.replace(
                command,
                processes=1,
                metrics=None,
                options=dataclasses.replace(
                    o,
                    listen=listen,
                    tls_listen=tls_listen,
                    reuse_port=True,
                    proxy_listeners=tuple(new for old, new in proxied if old in o.proxy_listeners),
                ),
            )

        observer = None
        if command.metrics is not None:
            from ._metrics import Metrics

            observer = Metrics()
        again = None if reload is None else lambda: one(reload())
        try:  # the parent's log writer thread did not survive the fork: a channel of its own
            return run_serve_logging(one(command), reload=again, observer=observer)
        except CLIError as exc:
            _error(str(exc))
            return exc.status

    def fork(started: Callable[[], None] | None = None) -> int:
        try:
            return run_processes(
                command.processes, options.listen, options.tls_listen, child, started=started
            )
        except OSError as exc:
            raise CLIError(f"cannot listen: {exc.strerror or exc}", Exit.FAILURE) from None

    address = command.metrics
    if address is None:
        return fork()
    from ._metrics import multiprocess_folder

    endpoints: list[MetricsEndpoint] = []
    owner = None if command.user is None else _owner(command.user)
    with multiprocess_folder(owner) as folder:

        def started() -> None:  # in the parent, after the forks: the children lack its socket
            endpoints.append(_serve_metrics(address, folder))

        try:
            return fork(started)
        finally:
            for endpoint in endpoints:
                endpoint.close()


def _serve_metrics(address: Address, source: Metrics | str) -> MetricsEndpoint:
    """/metrics on `address`, of `source`: a Metrics, or the multiprocess folder of the
    children of --processes. CLIError when it cannot listen."""
    from ._metrics import serve_metrics

    try:
        return serve_metrics(source, address)
    except OSError as exc:
        raise CLIError(
            f"--metrics {format_address(address)}: cannot listen: {exc.strerror or exc}",
            Exit.FAILURE,
        ) from None


@final
class _EarlyReload:
    """The SIGHUP handler while the server starts: the signal is remembered, and the server
    reloads as soon as it can, instead of ending (SIGHUP's default action) or, in a
    `--processes` child, losing it. A child inherits it, and what it remembered, at the fork."""

    def __init__(self) -> None:
        self.pending = False

    def __call__(self, signum: int, frame: types.FrameType | None) -> None:
        self.pending = True


def _reloader(
    server: Server, command: ServeCommand, read: Callable[[], ServeCommand]
) -> Callable[[int, types.FrameType | None], None]:
    """The SIGHUP handler: the server takes the command `read()` gives now (`_reload.py`)."""
    in_force = [command]

    def prepare(new: ServeCommand) -> None:
        if new.maildir is not None:
            _prepare_maildir(new, None)  # as the user we serve as now
        _check_factory(new)

    def on_hup(signum: int, frame: types.FrameType | None) -> None:
        log.info("received SIGHUP, reloading")
        in_force[0] = reload_server(server, in_force[0], read, prepare)

    return on_hup


def _owner(user: str) -> tuple[int, int] | None:
    """--user's (uid, gid) when we are root and will become it; None when we stay as we are.
    CLIError if we can't become it."""
    import pwd

    entry = pwd.getpwnam(user)
    if os.geteuid() != 0:
        if entry.pw_uid != os.geteuid():
            raise CLIError(f"--user {user}: only root can switch users")
        return None
    return None if entry.pw_uid == 0 else (entry.pw_uid, entry.pw_gid)


def _prepare_maildir(command: ServeCommand, owner: tuple[int, int] | None) -> None:
    """Create the Maildir before serving, given to --user; then make sure --user can write
    into it, or every delivery would fail."""
    path = command.maildir
    assert path is not None
    try:
        folders = MaildirHandler.prepare(path, per_recipient=command.per_recipient, owner=owner)
    except OSError as exc:
        raise CLIError(f"--maildir {path}: {exc.strerror or exc}", Exit.FAILURE) from None
    if owner is not None and command.user is not None:
        for folder in folders:
            if not _writable_by(folder, command.user, owner):
                raise CLIError(
                    f"--maildir {path}: {folder} is not writable by --user {command.user}",
                    Exit.FAILURE,
                )


def _writable_by(folder: Path, user: str, owner: tuple[int, int]) -> bool:
    """Whether `user` may create files in `folder`, asked of the kernel as that user (so that
    the folders above, ACLs and read-only mounts count), switching the process's effective ids
    for the time of the access() call. Only root gets here, before serving; the log writer
    thread, which only writes to the stderr it holds open, is the one other thread."""
    uid, gid = owner
    groups, egid = os.getgroups(), os.getegid()
    os.setgroups(os.getgrouplist(user, gid))
    os.setegid(gid)
    os.seteuid(uid)
    try:
        return os.access(folder, os.W_OK | os.X_OK, effective_ids=True)
    finally:
        os.seteuid(0)
        os.setegid(egid)
        os.setgroups(groups)


def _check_factory(command: ServeCommand) -> None:
    """Make sure the factory makes Handlers, before any client connects."""
    try:
        cls = App(command.factory, command.options).handler_class()
    except Exception as exc:
        log.debug("handler factory failed", exc_info=True)
        raise CLIError(
            f"--handler {command.handler}: making a handler failed: {type(exc).__name__}: {exc}"
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, Handler)):
        raise CLIError(
            f"--handler {command.handler}: the factory returned {cls.__name__}, not a Handler"
        )


def _log_start(command: ServeCommand) -> None:
    o = command.options
    handler = command.handler
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


def _error(message: str) -> None:
    text = " ".join(message.split())  # one line, whatever the message held
    print(f"{PROG}: error: {text}", file=sys.stderr, flush=True)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("smtpkit")
    except Exception:
        return "(not installed)"
