"""From parsed flags and a configuration file to a `ServeCommand`, binding nothing.

`parse_serve(argv)` is the whole of it: the flags (`_flags.py`), merged over the file of
`--config` (`_configfile.py`), become the handler factory, `smtp_core.Config`, `ServerOptions`
and how to run them. Everything that can be checked before serving is checked here, so that a
mistake is one line at startup: the handler is imported and must be callable without
arguments, the password and credential files are read, the certificate is loaded, the user
must exist and the listening hosts must resolve. Nothing is created or bound.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import os
import socket
import ssl
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, final

from smtp_core import Config
from smtpkit.handlers import (
    Handler,
    HandlerFactory,
    LmtpRelayHandler,
    MaildirHandler,
    PasswordFile,
    Pipeline,
    Policy,
    PrintHandler,
    RelayHandler,
    SinkHandler,
    handler_class_of,
)
from smtpkit.handlers.policies import LOOPBACK, PasswordAuth, RelayControl

from ._clierror import CLIError
from ._command import ServeCommand
from ._configfile import read_config
from ._flags import BY_DEST, FLAGS, READY_HANDLERS, SWITCH, Target, format_address, serve_parser
from ._listen import Address, make_ssl_context
from ._options import ServerOptions

__all__ = ["Settings", "assemble", "import_handler", "parse_serve", "settings_of"]

#: The benchmarks pick the asyncio transport's event loop with SMTPKIT_LOOP=asyncio|uvloop.
LOOP_ENV: Final = "SMTPKIT_LOOP"


@final
@dataclass(frozen=True)
class Settings:
    """The values of the flags, from the command line over the configuration file."""

    #: destination -> value, for what was given (on the command line or in the file).
    values: Mapping[str, Any]
    #: destination -> "file:line: key", for the values that came from the file.
    origins: Mapping[str, str] = field(default_factory=dict)
    #: The file's [[policy]] tables, built, each with where it is ("file:line: policy[N]").
    policies: tuple[tuple[Policy, str], ...] = ()

    def given(self, dest: str) -> bool:
        return dest in self.values

    def get(self, dest: str) -> Any:
        """The value, or the flag's default."""
        return self.values[dest] if dest in self.values else BY_DEST[dest].default

    def where(self, dest: str, item: Any = None) -> str:
        """Where a value was given: `--flag VALUE`, or `file:line: key`."""
        origin = self.origins.get(dest)
        if origin is not None:
            return origin
        flag = BY_DEST[dest]
        if flag.kind is SWITCH:
            return flag.name
        value: Any = self.values.get(dest) if item is None else item
        if flag.repeat and item is None:
            return " ".join(f"{flag.name} {flag.kind.show(one)}" for one in value)
        return f"{flag.name} {flag.kind.show(value)}"

    def error(self, dest: str, why: str, item: Any = None) -> CLIError:
        """A bad value: `--flag VALUE: why`, or `file:line: key: why`."""
        return CLIError(f"{self.where(dest, item)}: {why}")

    def conflict(self, dest: str, why: str) -> CLIError:
        """A flag that does not go with the others: `--flag why`, or `file:line: key: why`."""
        origin = self.origins.get(dest)
        return CLIError(f"{origin}: {why}" if origin else f"{BY_DEST[dest].name} {why}")


def parse_serve(argv: Sequence[str], *, environ: Mapping[str, str] | None = None) -> ServeCommand:
    """`smtpkit serve ARGV` as a ServeCommand; CLIError if anything is wrong.

    Binds nothing and writes nothing. It does read the --config file, import a --handler
    MODULE:ATTR, read the --auth-file, load the TLS certificate and resolve the --listen hosts,
    so that their errors come before serving.
    """
    given = vars(serve_parser().parse_args(list(argv)))
    return assemble(settings_of(given), os.environ if environ is None else environ)


def settings_of(given: Mapping[str, Any]) -> Settings:
    """The settings of parsed flags, over those of their --config file if any. --handler on
    the command line replaces the file's whole [deliver] table."""
    path = given.get("config")
    if path is None:
        return Settings(dict(given))
    file = read_config(path)
    if file.problems:
        first = file.problems[0].format(path)
        more = len(file.problems) - 1
        if more:
            first += f" (and {more} more: see 'smtpkit check-config {path}')"
        raise CLIError(first)
    values = dict(file.values)
    if "handler" not in given:
        values.update(file.deliver)
    values.update(given)
    origins = {dest: where for dest, where in file.origins.items() if dest not in given}
    return Settings(values, origins, file.policies)


def assemble(settings: Settings, environ: Mapping[str, str]) -> ServeCommand:
    """The ServeCommand of the settings; CLIError for the first thing wrong."""
    s = settings
    if s.given("anyio_backend") and s.get("transport") != "anyio":
        raise s.conflict("anyio_backend", "is for --transport anyio")
    if s.given("tls_key") and not s.given("tls_cert"):
        raise s.conflict("tls_key", "needs --tls-cert")
    for dest in ("tls_listen", "proxy_tls_listen"):
        if s.get(dest) and not s.given("tls_cert"):
            raise s.conflict(dest, "needs --tls-cert (and --tls-key)")
    if s.given("metrics") and importlib.util.find_spec("prometheus_client") is None:
        raise s.conflict("metrics", "needs prometheus_client: pip install 'smtpkit[metrics]'")
    if s.given("auth_file") and not s.given("tls_cert") and not s.get("auth_allow_plaintext"):
        raise s.conflict(
            "auth_file",
            "needs --tls-cert, as AUTH is offered over TLS only, or --auth-allow-plaintext",
        )

    warnings: list[str] = []
    handler = _ready_or_imported(s)
    maildir = handler.maildir
    factory = _pipeline(s, handler.factory)
    if (
        not s.given("auth_file")
        and s.get("auth_allow_plaintext")
        and not s.policies
        and (s.get("handler") in READY_HANDLERS)
    ):
        warnings.append("--auth-allow-plaintext does nothing without --auth-file")
    if s.given("user"):
        _check_user(s)

    config = _config(s)
    changes = _fields(s, Target.OPTIONS)
    changes.update(_listeners(s, warnings))
    tls_files = None
    if s.given("tls_cert"):
        changes["ssl_context"] = _ssl_context(s)
        tls_files = (s.get("tls_cert"), s.get("tls_key"))
    if s.get("processes") > 1:
        changes["reuse_port"] = True
    if environ.get(LOOP_ENV, "").strip().lower() == "asyncio":
        changes["uvloop"] = False
    try:
        options = ServerOptions(config=config, **changes)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    _resolve(s, options)
    return ServeCommand(
        factory=factory,
        options=options,
        maildir=maildir,
        per_recipient=handler.per_recipient,
        warnings=tuple(warnings),
        tls_files=tls_files,
        **_fields(s, Target.COMMAND),
    )


def _pipeline(s: Settings, deliver: HandlerFactory) -> HandlerFactory:
    """The deliverer behind the file's policies, --auth-file's PasswordAuth (which replaces
    the file's password-auth) and relay control. With no [[policy]] table, a deliverer that
    sends mail onward (relay) gets RelayControl over --relay-networks (default: loopback),
    --relay-domains and authenticated clients, unless --open-relay."""
    policies = [policy for policy, _ in s.policies]
    if s.given("auth_file"):
        kept = (p for p in policies if not isinstance(p, PasswordAuth))
        policies = [PasswordAuth(_password_file(s)), *kept]
    open_relay: bool = s.get("open_relay")
    flags = [dest for dest in ("relay_networks", "relay_domains") if s.given(dest)]
    if flags and (open_relay or any(p.controls_relay for p in policies)):
        other = "--open-relay" if open_relay else "the relay-control policy of the file"
        raise s.conflict(flags[0], f"goes against {other}")
    default = not s.policies and not open_relay and not isinstance(deliver, Pipeline)
    if default and (flags or handler_class_of(deliver).delivers_onward):
        networks = s.get("relay_networks") if s.given("relay_networks") else LOOPBACK
        control = RelayControl(networks=networks, domains=s.get("relay_domains") or ())
        policies.insert(0, control)
    if not policies:
        return deliver
    if isinstance(deliver, Pipeline):
        raise CLIError(
            f"{s.where('handler')} is a Pipeline: add --auth-file's PasswordAuth and relay "
            "control to it rather than on the command line"
        )
    try:
        return Pipeline(*policies, deliver=deliver, open_relay=open_relay)
    except (TypeError, ValueError) as exc:
        where = s.policies[0][1] if s.policies else s.where("handler")
        fix = " (in the file: a [[policy]] of type relay-control, or open_relay = true)"
        raise CLIError(f"{where}: {exc}{fix if 'relay' in str(exc) else ''}") from None


def _listeners(s: Settings, warnings: list[str]) -> dict[str, Any]:
    """The listeners behind a proxy: --proxy-listen and --proxy-tls-listen add them (and
    replace the default --listen when they are the only listeners given), --proxy-protocol
    puts every --listen and --tls-listen behind one. Any of them needs --proxy-trusted: a
    PROXY header from anyone else would let them pose as any client."""
    plain: tuple[Address, ...] = tuple(s.get("proxy_listen") or ())
    secure: tuple[Address, ...] = tuple(s.get("proxy_tls_listen") or ())
    if not (plain or secure or s.get("proxy_protocol")):
        if s.given("proxy_trusted"):
            warnings.append("--proxy-trusted does nothing without a PROXY listener")
        return {}
    given = next(d for d in ("proxy_protocol", "proxy_listen", "proxy_tls_listen") if s.get(d))
    if not s.given("proxy_trusted"):
        raise s.conflict(given, "needs --proxy-trusted CIDR: the networks of the proxies")
    listen: tuple[Address, ...] = tuple(s.get("listen"))
    if (plain or secure) and not s.given("listen"):
        listen = ()
    tls_listen: tuple[Address, ...] = tuple(s.get("tls_listen") or ())
    proxied = (*listen, *tls_listen) if s.get("proxy_protocol") else ()
    return {
        "listen": (*listen, *plain),
        "tls_listen": (*tls_listen, *secure),
        "proxy_listeners": (*proxied, *plain, *secure),
    }


def _fields(settings: Settings, target: Target) -> dict[str, Any]:
    """The fields of `target` that the flags set: those given, and those whose default is not
    the field's. The rest keep their defaults."""
    return {
        flag.field: flag.value_of(settings.get(flag.dest))
        for flag in FLAGS
        if flag.target is target and (settings.given(flag.dest) or flag.default_factory)
    }


def _config(s: Settings) -> Config:
    fields = _fields(s, Target.CONFIG)
    try:
        return Config(**fields)
    except ValueError as exc:
        message = str(exc)
        if not s.given("hostname") and "hostname" in message:
            message += ": the host's name is unusable, give one with --hostname"
        raise CLIError(message) from None


# --------------------------------------------------------------------------------- handlers


@final
@dataclass(frozen=True)
class _Handler:
    factory: HandlerFactory
    #: The Maildir folder to prepare before serving, and whether it is one per recipient.
    maildir: Path | None = None
    per_recipient: bool = False


def _ready_or_imported(s: Settings) -> _Handler:
    name: str = s.get("handler")
    for flag in FLAGS:
        if flag.handler is not None and flag.handler != name and s.given(flag.dest):
            raise s.conflict(flag.dest, f"is for --handler {flag.handler}")
    build = _READY.get(name)
    if build is not None:
        return build(s)
    if ":" in name:
        return _Handler(import_handler(name, s.where("handler")))
    raise s.error("handler", f"unknown handler: one of {', '.join(READY_HANDLERS)}, or MODULE:ATTR")


def _sink(s: Settings) -> _Handler:
    return _Handler(SinkHandler)


def _print(s: Settings) -> _Handler:
    return _Handler(functools.partial(PrintHandler, dump=True) if s.get("dump") else PrintHandler)


def _maildir(s: Settings) -> _Handler:
    path = Path(s.get("maildir")).absolute()
    try:
        if path.exists() and not path.is_dir():
            raise s.error("maildir", "exists and is not a directory")
    except OSError as exc:  # a parent folder we may not look into
        raise s.error("maildir", exc.strerror or str(exc)) from None
    per_recipient: bool = s.get("maildir_per_recipient")
    options = {"per_recipient": True} if per_recipient else {}
    factory = functools.partial(MaildirHandler, str(path), **options)
    return _Handler(factory, path, per_recipient)


def _relay(s: Settings) -> _Handler:
    if not s.given("relay"):
        raise CLIError("--handler relay needs --relay HOST:PORT ([deliver] host in a file)")
    host, port = s.get("relay")
    username = password = None
    if s.given("relay_auth"):
        try:
            username, password = RelayHandler.load_credentials(s.get("relay_auth"))
        except OSError as exc:
            raise s.error("relay_auth", exc.strerror or str(exc)) from None
        except ValueError as exc:
            raise s.error("relay_auth", str(exc)) from None
    factory = functools.partial(
        LmtpRelayHandler if s.get("relay_lmtp") else RelayHandler,
        host,
        port,
        starttls=s.get("relay_starttls"),
        username=username,
        password=password,
        local_hostname=s.values.get("hostname"),  # our EHLO name upstream; None: the FQDN
    )
    return _Handler(factory)


_READY: Final[Mapping[str, Callable[[Settings], _Handler]]] = {
    "sink": _sink,
    "print": _print,
    "maildir": _maildir,
    "relay": _relay,
}
assert _READY.keys() == READY_HANDLERS.keys()


def import_handler(spec: str, where: str | None = None) -> HandlerFactory:
    """The handler class or factory named by "MODULE:ATTR" (ATTR may be dotted); it must be
    callable without arguments, as the server calls it once per connection.

    The current directory comes first on sys.path, as with uvicorn, so that
    `smtpkit serve --handler mymodule:MyHandler` finds ./mymodule.py. `where` names the flag
    or key in messages.
    """
    where = where or f"--handler {spec}"
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise CLIError(f"{where}: expected MODULE:ATTR")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name + ".").startswith(exc.name + "."):
            raise CLIError(f"{where}: no module named {module_name!r}") from None
        raise CLIError(f"{where}: importing {module_name}: {exc}") from None
    except Exception as exc:
        raise CLIError(
            f"{where}: importing {module_name} failed: {type(exc).__name__}: {exc}"
        ) from None
    target: object = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise CLIError(f"{where}: {module_name} has no attribute {attr!r}") from None
    if isinstance(target, type) and not issubclass(target, Handler):
        raise CLIError(f"{where}: {attr} is a class but not a Handler subclass")
    if isinstance(target, Handler):
        raise CLIError(
            f"{where}: {attr} is a Handler instance; give its class or a factory "
            "(one handler per connection)"
        )
    if not callable(target):
        raise CLIError(f"{where}: {attr} is neither a Handler class nor a factory")
    _check_no_arguments(target, attr, where)
    factory: HandlerFactory = target
    return factory


def _check_no_arguments(factory: Callable[..., object], attr: str, where: str) -> None:
    """A factory that needs arguments would fail on every connection: fail now instead."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # no signature to read (a builtin): let it be
        return
    try:
        signature.bind()
    except TypeError as exc:
        raise CLIError(
            f"{where}: {attr}() needs arguments ({exc}), but the server makes each "
            "connection's handler with none: give a class or a function that needs none"
        ) from None


# --------------------------------------------------------------------------------- the rest


def _password_file(s: Settings) -> PasswordFile:
    path: str = s.get("auth_file")
    try:
        passwords = PasswordFile.load(path)
    except OSError as exc:
        raise s.error("auth_file", exc.strerror or str(exc)) from None
    except UnicodeDecodeError as exc:
        raise s.error("auth_file", f"not UTF-8 text ({exc.reason})") from None
    except ValueError as exc:  # "FILE:LINE: why"
        raise CLIError(f"{BY_DEST['auth_file'].name} {exc}") from None
    if not passwords.users:
        raise s.error("auth_file", "no users in the file: every login would fail")
    return passwords


def _ssl_context(s: Settings) -> ssl.SSLContext:
    cert: str = s.get("tls_cert")
    key: str | None = s.get("tls_key")
    for dest in ("tls_cert", "tls_key"):
        if s.given(dest):
            try:
                with open(s.get(dest), "rb"):
                    pass
            except OSError as exc:
                raise s.error(dest, exc.strerror or str(exc)) from None
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
        raise s.error("tls_cert", exc.strerror or str(exc)) from None


def _check_user(s: Settings) -> None:
    try:
        import pwd
    except ImportError:  # pragma: no cover - not on POSIX
        raise s.error("user", "needs a POSIX system") from None
    try:
        pwd.getpwnam(s.get("user"))
    except KeyError:
        raise s.error("user", "no such user") from None


def _resolve(s: Settings, options: ServerOptions) -> None:
    """Every listening host must resolve: a typo is a usage error, not a failure to bind."""
    for dest, addresses in (("listen", options.listen), ("tls_listen", options.tls_listen)):
        for address in addresses:
            host, port = address
            try:
                socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            except (socket.gaierror, UnicodeError) as exc:
                why = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
                where = s.where(dest, address) if s.given(dest) else format_address(address)
                raise CLIError(f"{where}: cannot resolve {host}: {why}") from None
