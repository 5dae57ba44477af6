"""The `smtpkit` command line (transports/_cli.py and the modules it is built from: _flags,
_configfile, _assemble): parsing, the configuration file, errors, and real runs.

Parsing is a pure function (`parse_serve`), tested flag by flag and key by key. The subprocess
tests run `python3 -m smtpkit serve ...` for real: wait for "listening on ... port N" on stderr,
talk SMTP with smtplib, then SIGTERM and expect exit status 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import io
import os
import pwd
import queue
import re
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from support import WAIT

from smtpkit.handlers import (
    Handler,
    MaildirHandler,
    Mode,
    PasswordFile,
    Pipeline,
    PrintHandler,
    RelayHandler,
    SinkHandler,
    hash_password,
    verify_password,
)
from smtpkit.handlers.policies import PasswordAuth
from smtpkit.transports import ServerOptions, _cli, _flags, _hash_password
from smtpkit.transports._cli import CLIError, ServeCommand, main, parse_serve
from smtpkit.transports._configfile import read_config
from smtpkit.transports.testing import running_server

ROOT = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"listening on (\S+) port (\d+)")
MESSAGE = (
    b"From: a@example.org\r\nTo: b@example.org\r\nSubject: cli test\r\n"
    b"\r\nHello from the CLI test.\r\n"
)

# Cheap hash costs for the tests' password files.
FAST = {"iterations": 1000}


# ----------------------------------------------------------------------------- parsing


def parse(*argv: str, **environ: str) -> ServeCommand:
    return parse_serve(list(argv), environ=environ)


def test_defaults_are_the_design_contract(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    command = parse()
    o, c = command.options, command.options.config
    assert command.transport == "asyncio"
    assert command.user is None
    assert command.processes == 1
    assert command.log_level == "INFO"
    assert o.listen == (("127.0.0.1", 1025),)
    assert o.tls_listen == ()
    assert o.ssl_context is None
    assert o.timeout == 300
    assert o.data_timeout == 600
    assert o.grace_period == 30
    assert o.min_data_rate == 500
    assert o.hook_timeout == 300
    assert o.stress_timeout == 10
    assert o.max_connections == 1000
    assert o.max_per_ip == 50
    assert o.workers == 32
    assert o.received_header is True
    assert o.reuse_port is False
    assert o.anyio_backend == "asyncio"
    assert o.uvloop is True
    assert c.hostname == socket.getfqdn()
    assert c.max_message_size == 33554432
    assert c.max_recipients == 1000
    assert c.lmtp is False
    assert c.bare_line_endings == "reject"
    assert c.auth_allow_plaintext is False
    # The handler: a Maildir catcher in ./maildir, which parsing did not create.
    assert command.maildir == tmp_path / "maildir"
    assert not (tmp_path / "maildir").exists()
    assert isinstance(command.factory, functools.partial)
    assert command.factory.func is MaildirHandler
    handler = command.factory()
    assert isinstance(handler, MaildirHandler)
    assert handler.maildir.path == tmp_path / "maildir"


def test_defaults_are_read_from_the_option_classes() -> None:
    """No default is written twice: what an absent flag means is the target field's default,
    and --help shows that same value."""
    command = parse("--hostname", "mx.example.org")
    fresh = ServerOptions()
    for flag in _flags.FLAGS:
        if flag.target is _flags.Target.OPTIONS:
            assert getattr(command.options, flag.field) == getattr(fresh, flag.field), flag.name
        elif flag.target is _flags.Target.CONFIG and flag.name != "--hostname":
            assert getattr(command.options.config, flag.field) == getattr(fresh.config, flag.field)
        elif flag.target is _flags.Target.COMMAND:
            assert getattr(command, flag.field) == _flags.default_of(ServeCommand, flag.field)
    helps = {
        (action.option_strings[0], action.metavar): action.help
        for action in _flags.serve_parser()._actions
    }
    for name, metavar, default in (
        ("--min-data-rate", "BYTES_PER_S", "500"),
        ("--hook-timeout", "SECONDS", "300"),
        ("--stress-timeout", "SECONDS", "10"),
        ("--max-message-size", "BYTES", "33554432"),
        ("--listen", "HOST:PORT", "127.0.0.1:1025"),
        ("--relay-starttls", "opportunistic|required|off", "opportunistic"),
        ("--maildir", "DIR", "maildir"),
    ):
        assert str(helps[name, metavar]).endswith(f"(default: {default})"), name


def test_every_flag(tmp_path: Path) -> None:
    command = parse(
        "--listen", "0.0.0.0:2525",
        "--listen", "[::1]:2526",
        "--transport", "anyio",
        "--anyio-backend", "trio",
        "--no-uvloop",
        "--handler", "sink",
        "--hostname", "mx.example.org",
        "--timeout", "12.5",
        "--data-timeout", "99",
        "--grace-period", "0",
        "--min-data-rate", "0",
        "--hook-timeout", "2.5",
        "--stress-timeout", "3",
        "--max-message-size", "1000000",
        "--max-recipients", "7",
        "--max-connections", "20000",
        "--max-per-ip", "0",
        "--workers", "4",
        "--processes", "1",
        "--lmtp",
        "--no-received-header",
        "--bare-lf", "normalize",
        "--log-level", "debug",
        "--user", current_user(),
    )  # fmt: skip
    o, c = command.options, command.options.config
    assert o.listen == (("0.0.0.0", 2525), ("::1", 2526))
    assert command.transport == "anyio"
    assert o.anyio_backend == "trio"
    assert o.uvloop is False
    assert command.factory is SinkHandler
    assert command.maildir is None
    assert c.hostname == "mx.example.org"
    assert o.timeout == 12.5
    assert o.data_timeout == 99
    assert o.grace_period == 0
    assert o.min_data_rate == 0
    assert o.hook_timeout == 2.5
    assert o.stress_timeout == 3
    assert c.max_message_size == 1000000
    assert c.max_recipients == 7
    assert o.max_connections == 20000
    assert o.max_per_ip == 0
    assert o.workers == 4
    assert c.lmtp is True
    assert o.received_header is False
    assert c.bare_line_endings == "normalize"
    assert command.log_level == "DEBUG"
    assert command.user == current_user()


def current_user() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


def test_listen_forms() -> None:
    assert parse("--listen", "127.0.0.1:0").options.listen == (("127.0.0.1", 0),)
    assert parse("--listen", "localhost").options.listen == (("localhost", 25),)
    assert parse("--listen", ":2525").options.listen == (("0.0.0.0", 2525),)
    assert parse("--listen", "[::]:25").options.listen == (("::", 25),)


def test_handlers_sink_print_dump_maildir(tmp_path: Path) -> None:
    assert parse("--handler", "sink").factory is SinkHandler
    assert parse("--handler", "print").factory is PrintHandler
    dump = parse("--handler", "print", "--dump").factory()
    assert isinstance(dump, PrintHandler) and dump.dump is True
    command = parse("--maildir", str(tmp_path / "box"))
    assert command.maildir == tmp_path / "box"
    handler = command.factory()
    assert isinstance(handler, MaildirHandler)
    assert handler.maildir.path == tmp_path / "box"


def test_environment_picks_the_stdlib_loop() -> None:
    """The benchmarks run the stdlib-loop column with SMTPKIT_LOOP=asyncio."""
    assert parse(SMTPKIT_LOOP="asyncio").options.uvloop is False
    assert parse(SMTPKIT_LOOP="uvloop").options.uvloop is True
    assert parse().options.uvloop is True


def test_tls_flags(tls_files: TlsFiles) -> None:
    command = parse(
        "--tls-cert", tls_files.cert, "--tls-key", tls_files.key,
        "--tls-listen", "127.0.0.1:0", "--tls-listen", "[::1]",
    )  # fmt: skip
    assert isinstance(command.options.ssl_context, ssl.SSLContext)
    assert command.options.tls_listen == (("127.0.0.1", 0), ("::1", 465))
    assert command.options.listen == (("127.0.0.1", 1025),)  # STARTTLS on the default one
    # A PEM file holding both the chain and the key needs no --tls-key.
    assert parse("--tls-cert", tls_files.combined).options.ssl_context is not None


def test_auth_file_puts_a_password_check_in_front(tmp_path: Path, tls_files: TlsFiles) -> None:
    auth_file = tmp_path / "passwords"
    auth_file.write_text(f"alice:secret\nbob:{hash_password('hunter2', **FAST)}\n")
    command = parse(
        "--handler", "sink", "--auth-file", str(auth_file), "--auth-allow-plaintext"
    )  # fmt: skip
    assert command.options.config.auth_allow_plaintext is True
    pipeline = command.factory
    assert isinstance(pipeline, Pipeline) and pipeline.deliverer_class is SinkHandler
    (policy,) = pipeline.policies
    assert isinstance(policy, PasswordAuth) and policy.passwords.users == ("alice", "bob")
    assert pipeline.modes["auth"] is Mode.THREAD  # hashing is slow: off the event loop
    # Over TLS, no --auth-allow-plaintext is needed.
    command = parse(
        "--auth-file", str(auth_file), "--tls-cert", tls_files.cert, "--tls-key", tls_files.key,
        "--maildir", str(tmp_path / "box"),
    )  # fmt: skip
    assert command.options.config.auth_allow_plaintext is False
    assert isinstance(command.factory, Pipeline)
    assert command.factory.deliverer_class is MaildirHandler


USER_MODULE = """
from smtpkit.handlers import Accept, Handler, Reject

class Fake(Handler):
    def rcpt(self, recipient, params):
        return Accept() if recipient.endswith("@example.org") else Reject()

class Outer:
    class Inner(Handler):
        pass

def make_handler():
    return Fake()

INSTANCE = Fake()
NOT_A_HANDLER = int
NUMBER = 42
"""


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A module of the user's in the current directory (not on sys.path yet)."""
    name = f"smtpkit_cli_user_{os.getpid()}"
    (tmp_path / f"{name}.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, name, raising=False)
    yield name
    sys.modules.pop(name, None)


def test_handler_module_attr(user_module: str) -> None:
    factory = parse("--handler", f"{user_module}:Fake").factory
    assert isinstance(factory, type) and factory.__name__ == "Fake"
    assert issubclass(factory, Handler)
    inner = parse("--handler", f"{user_module}:Outer.Inner").factory
    assert isinstance(inner, type) and inner.__qualname__ == "Outer.Inner"
    made = parse("--handler", f"{user_module}:make_handler").factory
    assert type(made()).__name__ == "Fake"


@pytest.mark.parametrize(
    ("attr", "message"),
    [
        ("Missing", "has no attribute 'Missing'"),
        ("Outer.Missing", "has no attribute 'Outer.Missing'"),
        ("INSTANCE", "is a Handler instance"),
        ("NOT_A_HANDLER", "not a Handler subclass"),
        ("NUMBER", "neither a Handler class nor a factory"),
    ],
)
def test_bad_handler_attributes(user_module: str, attr: str, message: str) -> None:
    with pytest.raises(CLIError, match=message):
        parse("--handler", f"{user_module}:{attr}")


def test_bad_handler_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    (tmp_path / "smtpkit_cli_broken.py").write_text("import smtpkit_no_such_dependency\n")
    (tmp_path / "smtpkit_cli_syntax.py").write_text("def oops(:\n")
    (tmp_path / "smtpkit_cli_raises.py").write_text("raise RuntimeError('boom')\n")
    cases = {
        "smtpkit_no_such_module:H": "no module named 'smtpkit_no_such_module'",
        "smtpkit_cli_broken:H": "No module named 'smtpkit_no_such_dependency'",
        "smtpkit_cli_syntax:H": "SyntaxError",
        "smtpkit_cli_raises:H": "RuntimeError: boom",
        "nocolon": "--handler nocolon: unknown handler",
        ":Attr": "expected MODULE:ATTR",
        "module:": "expected MODULE:ATTR",
    }
    try:
        for spec, message in cases.items():
            with pytest.raises(CLIError, match=re.escape(message)):
                parse("--handler", spec)
    finally:
        for name in ("smtpkit_cli_broken", "smtpkit_cli_syntax", "smtpkit_cli_raises"):
            sys.modules.pop(name, None)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--timeout", "abc"], "argument --timeout: not a number of seconds"),
        (["--timeout", "0"], "argument --timeout: must be more than 0"),
        (["--timeout", "nan"], "argument --timeout"),
        (["--data-timeout", "-1"], "argument --data-timeout"),
        (["--grace-period", "-1"], "argument --grace-period: must be 0 or more"),
        (["--workers", "0"], "argument --workers: must be at least 1"),
        (["--max-connections", "x"], "argument --max-connections: not an integer"),
        (["--max-per-ip", "-1"], "argument --max-per-ip: must be 0 or more"),
        (["--max-message-size", "0"], "argument --max-message-size"),
        (["--max-recipients", "0"], "argument --max-recipients"),
        (["--listen", "127.0.0.1:99999"], "port out of range"),
        (["--listen", "127.0.0.1:smtp"], "bad port"),
        (["--transport", "gevent"], "argument --transport: invalid choice"),
        (["--anyio-backend", "curio"], "argument --anyio-backend: invalid choice"),
        (["--anyio-backend", "trio"], "--anyio-backend is for --transport anyio"),
        (["--bare-lf", "keep"], "argument --bare-lf: invalid choice"),
        (["--log-level", "LOUD"], "argument --log-level"),
        (["--hostname", "two words"], "invalid hostname"),
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--max-conn", "5"], "unrecognized arguments"),  # no abbreviations: a stable contract
        (["--dump"], "--dump is for --handler print"),
        (["--handler", "sink", "--maildir", "x"], "--maildir is for --handler maildir"),
        (["--relay", "mx.example.org:25"], "--relay is for --handler relay"),
        (["--tls-key", "key.pem"], "--tls-key needs --tls-cert"),
        (["--tls-listen", "127.0.0.1:465"], "--tls-listen needs --tls-cert"),
        (["--tls-cert", "/nonexistent/cert.pem"], "--tls-cert /nonexistent/cert.pem: No such file"),
        (["--auth-file", "/nonexistent/passwords"], "--auth-file needs --tls-cert"),
        (
            ["--auth-file", "/nonexistent/passwords", "--auth-allow-plaintext"],
            "--auth-file /nonexistent/passwords: No such file or directory",
        ),
        (["--user", "smtpkit-no-such-user"], "--user smtpkit-no-such-user: no such user"),
        (["--processes", "0"], "argument --processes: must be at least 1"),
        (["--min-data-rate", "-1"], "argument --min-data-rate: must be 0 or more, not -1"),
        (["--min-data-rate", "1.5"], "argument --min-data-rate: not an integer"),
        (["--hook-timeout", "0"], "argument --hook-timeout: must be more than 0 seconds"),
        (["--stress-timeout", "x"], "argument --stress-timeout: not a number of seconds"),
        # issue 10: "--listen ''" silently bound 0.0.0.0 port 25
        (["--listen", ""], "argument --listen: empty address"),
        (["--listen", "  "], "argument --listen: empty address"),
        (["--listen", "127.0.0.1:"], "argument --listen: no port after the colon"),
        # issue 10: an unresolvable host said "Name or service not known" (no flag, no host)
        (
            ["--listen", "nonexistent.invalid:2525"],
            "--listen nonexistent.invalid:2525: cannot resolve nonexistent.invalid: ",
        ),
        (
            ["--tls-listen", "nonexistent.invalid", "--tls-cert", "missing.pem"],
            "--tls-cert missing.pem: No such file",  # the certificate is checked first
        ),
        (["--config", "/nonexistent/smtpkit.toml"], "/nonexistent/smtpkit.toml: cannot read"),
    ],
)
def test_bad_arguments(argv: list[str], message: str) -> None:
    with pytest.raises(CLIError, match=re.escape(message)) as info:
        parse(*argv)
    assert info.value.status == 2


def test_bad_tls_and_auth_files(tmp_path: Path, tls_files: TlsFiles) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(CLIError, match="cannot load TLS certificate"):
        parse("--tls-cert", str(junk))
    with pytest.raises(CLIError, match="cannot load TLS certificate"):
        parse("--tls-cert", tls_files.cert, "--tls-key", tls_files.cert)  # no key in it
    with pytest.raises(CLIError, match="the key does not match the certificate"):
        parse("--tls-cert", tls_files.cert, "--tls-key", tls_files.other_key)
    with pytest.raises(CLIError, match=re.escape("--tls-key /nonexistent/key.pem: No such file")):
        parse("--tls-cert", tls_files.cert, "--tls-key", "/nonexistent/key.pem")
    bad = tmp_path / "passwords"
    bad.write_text("alice:secret\nbob\n")
    with pytest.raises(CLIError, match=re.escape(f"--auth-file {bad}:2: expected user:password")):
        parse("--auth-file", str(bad), "--auth-allow-plaintext")


def test_existing_file_as_maildir(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(CLIError, match="not a directory"):
        parse("--maildir", str(tmp_path / "file"))


GATEWAY_MODULE = """
from smtpkit.handlers import Handler

class Gateway(Handler):
    def __init__(self, upstream, port=25):
        self.upstream = upstream

class Defaults(Handler):
    def __init__(self, upstream="mx.example.org", *, port=25):
        self.upstream = upstream

def make(upstream):
    return Gateway(upstream)
"""


def test_a_handler_needing_arguments_is_refused_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 10: it started, then dropped every connection with a TypeError."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    name = f"smtpkit_cli_gw_{os.getpid()}"
    (tmp_path / f"{name}.py").write_text(GATEWAY_MODULE)
    try:
        for attr, missing in (("Gateway", "'upstream'"), ("make", "'upstream'")):
            with pytest.raises(CLIError, match=f"needs arguments .*{missing}") as info:
                parse("--handler", f"{name}:{attr}")
            assert info.value.status == 2
            assert str(info.value).startswith(f"--handler {name}:{attr}: {attr}() needs")
        # Arguments with defaults are fine: the server can call it with none.
        factory = parse("--handler", f"{name}:Defaults").factory
        assert isinstance(factory, type) and factory.__name__ == "Defaults"
    finally:
        sys.modules.pop(name, None)


def test_an_empty_auth_file_is_an_error(tmp_path: Path) -> None:
    """Issue 10: it was accepted silently, and every login failed."""
    empty = tmp_path / "passwords"
    empty.write_text("# nobody yet\n\n")
    with pytest.raises(CLIError, match="no users in the file") as info:
        parse("--auth-file", str(empty), "--auth-allow-plaintext")
    assert info.value.status == 2
    assert str(info.value).startswith(f"--auth-file {empty}: ")


def test_maildir_prepare_gives_new_folders_to_the_owner(tmp_path: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    owner = (nobody.pw_uid, nobody.pw_gid)
    folders = MaildirHandler.prepare(tmp_path / "one", owner=owner)
    assert folders == (tmp_path / "one" / "tmp", tmp_path / "one" / "new")
    for folder in (tmp_path / "one", *folders, tmp_path / "one" / "cur"):
        assert (folder.stat().st_uid, folder.stat().st_gid) == owner
    (tmp_path / "two").mkdir()  # an existing folder keeps its owner
    assert MaildirHandler.prepare(tmp_path / "two", per_recipient=True, owner=owner) == (
        tmp_path / "two",
    )
    assert (tmp_path / "two").stat().st_uid == os.geteuid()
    assert list((tmp_path / "two").iterdir()) == []


# ----------------------------------------------------------------------------- --config FILE


def write(path: Path, text: str) -> str:
    path.write_text(textwrap.dedent(text))
    return str(path)


def comparable(command: ServeCommand) -> tuple[object, ...]:
    """What a command means, for comparing two ways of saying it."""
    factory = command.factory
    if isinstance(factory, functools.partial):
        factory_key: object = (factory.func, factory.args, factory.keywords)
    else:
        factory_key = factory
    options = dataclasses.replace(command.options, ssl_context=None)
    return (factory_key, options, dataclasses.replace(command, factory=None, options=None))


def test_every_server_flag_is_a_key(tmp_path: Path) -> None:
    """A file says what the same flags say, key for flag."""
    argv = [
        "--listen", "127.0.0.1:0", "--listen", "[::1]:2526", "--transport", "anyio",
        "--anyio-backend", "trio", "--no-uvloop", "--hostname", "mx.example.org",
        "--timeout", "12.5", "--data-timeout", "99", "--min-data-rate", "0",
        "--hook-timeout", "7", "--stress-timeout", "2", "--grace-period", "0",
        "--max-message-size", "1000000", "--max-recipients", "7", "--max-connections", "20",
        "--max-per-ip", "0", "--workers", "4", "--processes", "2", "--lmtp",
        "--no-received-header", "--bare-lf", "normalize", "--log-level", "debug",
        "--user", current_user(), "--auth-allow-plaintext",
    ]  # fmt: skip
    config = write(
        tmp_path / "all.toml",
        f"""
        listen = ["127.0.0.1:0", "[::1]:2526"]
        transport = "anyio"
        anyio_backend = "trio"
        no_uvloop = true
        hostname = "mx.example.org"
        timeout = 12.5
        data_timeout = 99
        min_data_rate = 0
        hook_timeout = 7
        stress_timeout = 2.0
        grace_period = 0
        max_message_size = 1_000_000
        max_recipients = 7
        max_connections = 20
        max_per_ip = 0
        workers = 4
        processes = 2
        lmtp = true
        no_received_header = true
        bare_lf = "normalize"
        log_level = "debug"
        user = "{current_user()}"
        auth_allow_plaintext = true
        """,
    )
    from_flags = parse(*argv, "--maildir", str(tmp_path / "box"))
    from_file = parse("--config", config, "--maildir", str(tmp_path / "box"))
    assert comparable(from_file) == comparable(from_flags)
    assert from_file.options.stress_timeout == 2 and from_file.options.reuse_port is True
    # Every server flag is the top-level key of its name; a handler's options are [deliver]'s.
    for flag in _flags.FLAGS:
        if flag.handler is None and flag.name not in ("--config", "--handler"):
            assert _flags.BY_KEY[flag.dest] is flag, flag.name
        elif flag.handler is not None:
            assert flag.dest not in _flags.BY_KEY, flag.name


def test_the_command_line_wins_over_the_file(tmp_path: Path) -> None:
    config = write(
        tmp_path / "smtpkit.toml",
        """
        listen = ["127.0.0.1:2525"]
        timeout = 60
        max_recipients = 5
        lmtp = true
        [deliver]
        type = "maildir"
        maildir = "from-file"
        """,
    )
    command = parse("--config", config, "--timeout", "30", "--listen", "127.0.0.1:2600",
                    "--maildir", str(tmp_path / "from-flag"))  # fmt: skip
    assert command.options.timeout == 30
    assert command.options.listen == (("127.0.0.1", 2600),)  # replaced, not added to
    assert command.options.config.max_recipients == 5
    assert command.options.config.lmtp is True
    assert command.maildir == tmp_path / "from-flag"
    # --handler replaces the whole [deliver] table: its maildir key is not carried over.
    command = parse("--config", config, "--handler", "sink")
    assert command.factory is SinkHandler and command.maildir is None


def test_deliver_tables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cases = {
        'type = "sink"': SinkHandler,
        'type = "print"': PrintHandler,
    }
    for table, expected in cases.items():
        config = write(tmp_path / "d.toml", f"[deliver]\n{table}\n")
        assert parse("--config", config).factory is expected
    config = write(tmp_path / "d.toml", '[deliver]\ntype = "print"\ndump = true\n')
    dump = parse("--config", config).factory()
    assert isinstance(dump, PrintHandler) and dump.dump is True
    config = write(
        tmp_path / "d.toml",
        '[deliver]\ntype = "maildir"\nmaildir = "boxes"\nper_recipient = true\n',
    )
    command = parse("--config", config)
    assert command.maildir == tmp_path / "boxes" and command.per_recipient is True
    secret = tmp_path / "relay-auth"
    secret.write_text("me@example.net:s3cret\n")
    config = write(
        tmp_path / "d.toml",
        f"""
        hostname = "gw.example.org"
        [deliver]
        type = "relay"
        host = "smtp.example.net"
        port = 587
        starttls = "required"
        auth = "{secret}"
        """,
    )
    pipeline = parse("--config", config).factory
    assert isinstance(pipeline, Pipeline)  # relay control in front: loopback and logged-in users
    handler = pipeline.deliver()
    assert isinstance(handler, RelayHandler)
    assert (handler.host, handler.port, handler.starttls) == ("smtp.example.net", 587, "required")
    assert (handler.username, handler.password) == ("me@example.net", "s3cret")
    assert handler.local_hostname == "gw.example.org"
    config = write(tmp_path / "d.toml", '[deliver]\ntype = "relay"\nhost = "mx.example.net"\n')
    pipeline = parse("--config", config).factory
    assert isinstance(pipeline, Pipeline)
    handler = pipeline.deliver()
    assert isinstance(handler, RelayHandler) and handler.port == 25  # RelayHandler's default
    (tmp_path / "smtpkit_cli_toml_user.py").write_text(USER_MODULE)
    monkeypatch.setattr(sys, "path", list(sys.path))
    try:
        config = write(tmp_path / "d.toml", '[deliver]\ntype = "smtpkit_cli_toml_user:Fake"\n')
        factory = parse("--config", config).factory
        assert isinstance(factory, type) and factory.__name__ == "Fake"
    finally:
        sys.modules.pop("smtpkit_cli_toml_user", None)


BROKEN = """\
# every kind of mistake, one per line
listen = "127.0.0.1:25"
max_message_size = "32M"
timeout = 0
max_conections = 5
maildir = "mail"
lmtp = 1

[deliver]
type = "relay"
port = 2525
starttls = "sometimes"
dump = true

[[policy]]
type = "dnsbl"
"""


def test_check_config_names_file_line_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path / "broken.toml", BROKEN)
    assert main(["check-config", path]) == 1
    out, err = capsys.readouterr()
    assert err == ""
    assert out.splitlines() == [
        f"{path}:2: listen: expected an array, not a string",
        f"{path}:3: max_message_size: expected an integer, not a string",
        f"{path}:4: timeout: must be more than 0 seconds, not 0",
        f"{path}:5: max_conections: unknown key (did you mean max_connections?)",
        f"{path}:6: maildir: goes in the [deliver] table",
        f"{path}:7: lmtp: expected a boolean, not an integer",
        f"{path}:12: deliver.starttls: invalid choice: 'sometimes' "
        "(choose from opportunistic, required, off)",
        f"{path}:13: deliver.dump: not a key of type 'relay' "
        "(its keys: starttls, auth, lmtp, host, port)",
        f"{path}:9: deliver.host: missing: the smarthost of type 'relay'",
        f'{path}:15: policy[1].zones: missing: the DNS zones to ask, e.g. ["zen.spamhaus.org"]',
    ]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("listen = [\n  1,\n]\n", "1: listen: expected a string, not an integer"),
        ("workers = true\n", "1: workers: expected an integer, not a boolean"),
        ("handler = 'sink'\n", '1: handler: not a key: give a [deliver] table with type = "..."'),
        ("config = 'other.toml'\n", "1: config: unknown key"),
        ("[deliver]\nmaildir = 'x'\n", "1: deliver.type: missing: one of sink, print"),
        ("[deliver]\ntype = 'smtp'\n", "2: deliver.type: 'smtp' is not one of sink, print"),
        ("[deliver]\ntype = 'sink'\nmaildir = 'x'\n", "3: deliver.maildir: not a key of type"),
        ("deliver = 'sink'\n", "1: deliver: expected a table, not a string"),
        ("[deliver]\ntype='relay'\nhost='h'\nport=0\n", "4: deliver.port: expected a port"),
        ("timeout = 1\nx = = 2\ny = 3\n", "2: invalid TOML: "),
        ("timeout = 1\nx = [1,\n", "2: invalid TOML: "),  # at the end: the last line
        ("[[policy]]\ntype = 'dnsbl'\n", "1: policy[1].zones: missing: the DNS zones to ask"),
        (
            "[[policy]]\ntype = 'dnsbl'\nzones = ['x']\n[[policy]]\ntype = 'nope'\n",
            "5: policy[2].type: 'nope' is not a policy type",
        ),
    ],
)
def test_file_problems(tmp_path: Path, text: str, problem: str) -> None:
    path = write(tmp_path / "f.toml", text)
    with pytest.raises(CLIError, match=re.escape(f"{path}:{problem}")) as info:
        parse("--config", path)
    assert info.value.status == 2


def test_serve_with_a_broken_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path / "broken.toml", BROKEN)
    assert main(["serve", "--config", path]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"smtpkit: error: {path}:2: listen: expected an array, not a string "
        f"(and 9 more: see 'smtpkit check-config {path}')\n"
    )


def test_check_config_runs_the_checks_of_serve(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Past the file's own problems, what `serve` would refuse at start: here a file it names."""
    path = write(tmp_path / "gw.toml", 'tls_cert = "/nonexistent/cert.pem"\n')
    assert main(["check-config", path]) == 1
    assert capsys.readouterr().out == f"{path}:1: tls_cert: No such file or directory\n"
    good = write(tmp_path / "good.toml", 'listen = ["127.0.0.1:0"]\n[deliver]\ntype = "sink"\n')
    assert main(["check-config", good]) == 0
    assert capsys.readouterr().out == f"{good}: ok\n"
    assert main(["check-config", str(tmp_path / "missing.toml")]) == 1
    assert "missing.toml: cannot read: No such file" in capsys.readouterr().out
    with pytest.raises(CLIError, match="the following arguments are required"):
        _cli.build_parser().parse_args(["check-config"])


# ----------------------------------------------------------------------------- main()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "a command is needed"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["serve", "--timeout", "x"], "argument --timeout"),
        (["serve", "--handler", "smtpkit_no_such_module:H"], "no module named"),
        (["serve", "--processes", "0", "--handler", "sink"], "--processes"),
        (["serve", "--listen", ""], "argument --listen: empty address"),
        (
            ["serve", "--listen", "nonexistent.invalid"],
            "--listen nonexistent.invalid:25: cannot resolve nonexistent.invalid",
        ),
        (
            ["serve", "--auth-file", "/dev/null", "--auth-allow-plaintext"],
            "--auth-file /dev/null: no users in the file",
        ),
        (["check-config"], "the following arguments are required: FILE.toml"),
    ],
)
def test_main_errors_are_one_line(
    argv: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("smtpkit: error: ")
    assert message in err
    assert "Traceback" not in err


def test_main_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--help"]) == 0
    out, _ = capsys.readouterr()
    for flag in (
        "--listen", "--transport", "--handler", "--maildir", "--relay", "--hostname",
        "--tls-cert", "--tls-key", "--tls-listen", "--auth-file", "--auth-allow-plaintext",
        "--timeout", "--max-message-size", "--max-recipients", "--max-connections", "--workers",
        "--user", "--processes", "--max-per-ip", "--data-timeout", "--grace-period", "--lmtp",
        "--no-received-header", "--anyio-backend", "--no-uvloop", "--dump", "--log-level",
        "--bare-lf", "--maildir-per-recipient", "--relay-starttls", "--relay-auth",
        "--config", "--min-data-rate", "--hook-timeout", "--stress-timeout",
    ):  # fmt: skip
        assert flag in out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("smtpkit ")


def test_hash_password_from_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("s3cret: with spaces \n"))
    assert main(["hash-password"]) == 0
    hashed = capsys.readouterr().out.strip()
    assert hashed.startswith("pbkdf2_sha256$")
    assert verify_password("s3cret: with spaces ", hashed)
    monkeypatch.setattr(sys, "stdin", io.StringIO("s3cret\r\n"))
    assert main(["hash-password", "--scheme", "scrypt"]) == 0
    hashed = capsys.readouterr().out.strip()
    assert hashed.startswith("scrypt$")
    assert verify_password("s3cret", hashed)


def test_hash_password_prompts_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    answers = iter(["pw1", "pw1", "pw1", "pw2"])
    monkeypatch.setattr(sys, "stdin", Tty())
    monkeypatch.setattr(_hash_password.getpass, "getpass", lambda prompt="": next(answers))
    assert main(["hash-password"]) == 0
    assert verify_password("pw1", capsys.readouterr().out.strip())
    assert main(["hash-password"]) == 2
    assert "smtpkit: error: the passwords differ" in capsys.readouterr().err


def test_hash_password_refuses_an_empty_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert main(["hash-password"]) == 2
    assert capsys.readouterr().err == "smtpkit: error: empty password\n"


# ----------------------------------------------------------------------------- TLS files


class TlsFiles:
    def __init__(self, directory: Path) -> None:
        self.ca = trustme.CA()
        server = self.ca.issue_cert("localhost", "127.0.0.1")
        self.cert = str(directory / "cert.pem")
        self.key = str(directory / "key.pem")
        self.combined = str(directory / "combined.pem")
        server.cert_chain_pems[0].write_to_path(self.cert)
        for pem in server.cert_chain_pems[1:]:
            pem.write_to_path(self.cert, append=True)
        server.private_key_pem.write_to_path(self.key)
        server.private_key_and_cert_chain_pem.write_to_path(self.combined)
        self.other_key = str(directory / "other-key.pem")
        self.ca.issue_cert("other.example").private_key_pem.write_to_path(self.other_key)

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return TlsFiles(tmp_path_factory.mktemp("tls"))


# ----------------------------------------------------------------------------- real runs


class ServerProcess:
    """`python3 -m smtpkit serve ARGS` in a subprocess, its stderr read line by line."""

    def __init__(self, args: list[str], cwd: Path, command: list[str] | None = None) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        env.pop("SMTPKIT_LOOP", None)
        self.proc = subprocess.Popen(
            [*(command or [sys.executable, "-m", "smtpkit"]), *args],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, pattern: re.Pattern[str]) -> re.Match[str]:
        """The first new stderr line matching `pattern`; fails on exit or after WAIT."""
        while True:
            try:
                line = self._queue.get(timeout=WAIT)
            except queue.Empty:
                pytest.fail(f"no line matching {pattern.pattern!r} in {WAIT}s:\n{self.stderr}")
            if line is None:
                pytest.fail(
                    f"exited ({self.proc.wait()}) before {pattern.pattern!r}:\n{self.stderr}"
                )
            match = pattern.search(line)
            if match:
                return match

    def port(self) -> int:
        return int(self.wait_for(LISTENING).group(2))

    def stop(self) -> int:
        """SIGTERM, and the exit status."""
        self.proc.send_signal(signal.SIGTERM)
        return self.wait()

    def wait(self) -> int:
        try:
            status = self.proc.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail(f"still running {WAIT}s after SIGTERM:\n{self.stderr}")
        self._reader.join(WAIT)
        return status

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def run_server() -> Iterator[type[ServerProcess]]:
    """Start `ServerProcess`es; any still running at teardown is killed."""
    started: list[ServerProcess] = []

    class Tracked(ServerProcess):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            started.append(self)

    yield Tracked
    for server in started:
        server.kill()


def send(port: int, *, sender: str = "a@example.org", rcpt: str = "b@example.org") -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=WAIT) as client:
        client.sendmail(sender, [rcpt], MESSAGE)


def maildir_files(maildir: Path) -> list[Path]:
    return sorted((maildir / "new").iterdir())


def assert_clean_exit(server: ServerProcess) -> None:
    status = server.stop()
    assert status == 0, server.stderr
    assert "Traceback" not in server.stderr


def test_serve_into_a_maildir(tmp_path: Path, run_server: type[ServerProcess]) -> None:
    maildir = tmp_path / "mail"
    server = run_server(["serve", "--listen", "127.0.0.1:0", "--maildir", str(maildir)], tmp_path)
    match = server.wait_for(LISTENING)
    assert match.group(1) == "127.0.0.1"
    port = int(match.group(2))
    assert port != 0
    send(port)
    server.wait_for(re.compile(r"from=<a@example.org> nrcpt=1 .* decision=accepted"))
    files = maildir_files(maildir)
    assert len(files) == 1
    content = files[0].read_bytes()
    assert content.endswith(MESSAGE)
    assert content.startswith(b"Received: from ")
    assert list((maildir / "tmp").iterdir()) == []
    assert_clean_exit(server)
    assert "received SIGTERM" in server.stderr


@pytest.mark.parametrize(
    "transport",
    [
        ["--transport", "asyncio", "--no-uvloop"],
        ["--transport", "anyio", "--anyio-backend", "asyncio"],
        ["--transport", "anyio", "--anyio-backend", "trio"],
        ["--transport", "threads"],
    ],
    ids=["asyncio-stdlib", "anyio-asyncio", "anyio-trio", "threads"],
)
def test_serve_on_every_transport(
    tmp_path: Path, run_server: type[ServerProcess], transport: list[str]
) -> None:
    server = run_server(["serve", "--listen", "127.0.0.1:0", *transport], tmp_path)
    send(server.port())
    server.wait_for(re.compile(r"decision=accepted"))
    assert len(maildir_files(tmp_path / "maildir")) == 1
    assert_clean_exit(server)


def test_serve_default_maildir_is_in_the_current_directory(
    tmp_path: Path, run_server: type[ServerProcess]
) -> None:
    server = run_server(["serve", "--listen", "127.0.0.1:0"], tmp_path)
    port = server.port()
    assert (tmp_path / "maildir" / "new").is_dir()  # made before serving
    send(port)
    send(port, rcpt="c@example.org")
    server.wait_for(re.compile(r"from=<a@example.org> nrcpt=1 .* decision=accepted"))
    server.wait_for(re.compile(r"from=<a@example.org> nrcpt=1 .* decision=accepted"))
    files = maildir_files(tmp_path / "maildir")
    assert len(files) == 2
    assert all(f.read_bytes().endswith(MESSAGE) for f in files)
    assert_clean_exit(server)
    # Every line is a log line of the documented format.
    for line in server.stderr.splitlines():
        assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ smtpkit[\w.]*: ", line), line


@pytest.fixture
def auth_file(tmp_path: Path) -> Path:
    path = tmp_path / "passwords"
    path.write_text(
        "# plain, pbkdf2 and scrypt\n"
        "plain@example.org:plain secret\n"
        f"hashed@example.org:{hash_password('hashed secret', **FAST)}\n"
        f"scrypt:{hash_password('scrypt secret', 'scrypt', n=16, r=8, p=1)}\n"
    )
    return path


def test_auth_file_plaintext_and_hashed(
    tmp_path: Path, auth_file: Path, run_server: type[ServerProcess]
) -> None:
    server = run_server(
        [
            "serve", "--listen", "127.0.0.1:0", "--handler", "sink",
            "--auth-file", str(auth_file), "--auth-allow-plaintext",
        ],
        tmp_path,
    )  # fmt: skip
    port = server.port()
    for user, password in (
        ("plain@example.org", "plain secret"),
        ("hashed@example.org", "hashed secret"),
        ("scrypt", "scrypt secret"),
    ):
        with smtplib.SMTP("127.0.0.1", port, timeout=WAIT) as client:
            client.ehlo()
            assert set(client.esmtp_features["auth"].split()) == {"PLAIN", "LOGIN"}
            assert client.login(user, password)[0] == 235
            client.sendmail("a@example.org", ["b@example.org"], MESSAGE)
    for user, password in (
        ("plain@example.org", "hashed secret"),
        ("hashed@example.org", "pbkdf2_sha256"),
        ("nobody", "plain secret"),
    ):
        with smtplib.SMTP("127.0.0.1", port, timeout=WAIT) as client:
            with pytest.raises(smtplib.SMTPAuthenticationError) as info:
                client.login(user, password)
            assert info.value.smtp_code == 535
    server.wait_for(re.compile(r"authentication failed user=nobody "))
    assert_clean_exit(server)


def test_starttls_then_auth(
    tmp_path: Path, auth_file: Path, tls_files: TlsFiles, run_server: type[ServerProcess]
) -> None:
    server = run_server(
        [
            "serve", "--listen", "127.0.0.1:0", "--handler", "sink", "--auth-file", str(auth_file),
            "--tls-cert", tls_files.cert, "--tls-key", tls_files.key, "--hostname", "localhost",
        ],
        tmp_path,
    )  # fmt: skip
    port = server.port()
    with smtplib.SMTP("127.0.0.1", port, timeout=WAIT) as client:
        client.ehlo()
        assert client.has_extn("starttls")
        assert not client.has_extn("auth")  # never over plaintext without the flag
        client.starttls(context=tls_files.client_context())
        client.ehlo()
        assert client.has_extn("auth")
        assert client.login("hashed@example.org", "hashed secret")[0] == 235
        client.sendmail("a@example.org", ["b@example.org"], MESSAGE)
    assert_clean_exit(server)


def test_smtps_listener(
    tmp_path: Path, tls_files: TlsFiles, run_server: type[ServerProcess]
) -> None:
    server = run_server(
        [
            "serve", "--listen", "127.0.0.1:0", "--tls-listen", "127.0.0.1:0",
            "--tls-cert", tls_files.cert, "--tls-key", tls_files.key,
            "--maildir", str(tmp_path / "box"), "--hostname", "localhost",
        ],
        tmp_path,
    )  # fmt: skip
    server.wait_for(LISTENING)
    tls_port = server.port()  # the second listener is the SMTPS one
    with smtplib.SMTP_SSL(
        "127.0.0.1", tls_port, timeout=WAIT, context=tls_files.client_context()
    ) as client:
        client.sendmail("a@example.org", ["b@example.org"], MESSAGE)
    server.wait_for(re.compile(r"decision=accepted"))
    assert len(maildir_files(tmp_path / "box")) == 1
    assert_clean_exit(server)


def test_user_handler_from_the_current_directory(
    tmp_path: Path, run_server: type[ServerProcess]
) -> None:
    """Like the console script: the launcher's directory, not the cwd, is sys.path[0]."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "smtpkit_cli_catcher.py").write_text(
        textwrap.dedent(
            """
            import logging
            from smtpkit.handlers import Accept, Handler, Reject

            class OnlyExampleOrg(Handler):
                def rcpt(self, recipient, params):
                    if recipient.endswith("@example.org"):
                        return Accept()
                    return Reject(550, "5.1.1 not here")

                def data(self, message):
                    logging.getLogger("smtpkit.test").info("user handler got %d", len(message))
                    return Accept()
            """
        )
    )
    launcher = tmp_path / "bin" / "smtpkit"
    launcher.parent.mkdir()
    launcher.write_text("import sys\nfrom smtpkit.transports._cli import main\nsys.exit(main())\n")
    server = run_server(
        ["serve", "--listen", "127.0.0.1:0", "--handler", "smtpkit_cli_catcher:OnlyExampleOrg"],
        work,
        command=[sys.executable, str(launcher)],
    )
    port = server.port()
    send(port)
    server.wait_for(re.compile(r"user handler got \d+"))
    with (
        smtplib.SMTP("127.0.0.1", port, timeout=WAIT) as client,
        pytest.raises(smtplib.SMTPRecipientsRefused),
    ):
        client.sendmail("a@example.org", ["b@elsewhere.example"], MESSAGE)
    assert_clean_exit(server)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["serve", "--bogus"], "unrecognized arguments: --bogus"),
        (["serve", "--listen", "nope:port"], "bad port"),
        (["serve", "--handler", "smtpkit_no_such_module:Handler"], "no module named"),
        (["serve", "--workers", "-3"], "--workers"),
        (["serve", "--tls-cert", "missing.pem"], "--tls-cert missing.pem: No such file"),
        (["serve", "--listen", ""], "argument --listen: empty address"),
        (["serve", "--listen", "nonexistent.invalid:2525"], "cannot resolve nonexistent.invalid"),
    ],
)
def test_bad_flags_in_a_real_run(
    tmp_path: Path, run_server: type[ServerProcess], argv: list[str], message: str
) -> None:
    server = run_server(argv, tmp_path)
    assert server.wait() == 2
    assert server.stderr.startswith("smtpkit: error: ")
    assert server.stderr.count("\n") == 1, server.stderr
    assert message in server.stderr
    assert "Traceback" not in server.stderr


def test_serve_from_a_config_file(tmp_path: Path, run_server: type[ServerProcess]) -> None:
    config = write(
        tmp_path / "catcher.toml",
        f"""
        listen = ["127.0.0.1:0"]
        hostname = "catcher.example"
        [deliver]
        type = "maildir"
        maildir = "{tmp_path / "box"}"
        """,
    )
    server = run_server(["serve", "--config", config], tmp_path)
    send(server.port())
    server.wait_for(re.compile(r"decision=accepted"))
    (message,) = maildir_files(tmp_path / "box")
    assert b"by catcher.example" in message.read_bytes()
    assert_clean_exit(server)
    assert "handler maildir" in server.stderr


def test_a_real_handler_needing_arguments_is_one_line(
    tmp_path: Path, run_server: type[ServerProcess]
) -> None:
    """Issue 10: it started, then dropped every connection with a TypeError in the log."""
    (tmp_path / "smtpkit_cli_gw.py").write_text(GATEWAY_MODULE)
    server = run_server(["serve", "--handler", "smtpkit_cli_gw:Gateway"], tmp_path)
    assert server.wait() == 2
    assert server.stderr.startswith(
        "smtpkit: error: --handler smtpkit_cli_gw:Gateway: Gateway() needs arguments "
    )
    assert server.stderr.count("\n") == 1 and "Traceback" not in server.stderr


#: Run as root without the capabilities that let root enter any folder, so that permissions
#: bite as they do for any other user (setpriv is util-linux's, a required tool here).
WITHOUT_DAC_OVERRIDE = [
    "setpriv",
    "--inh-caps=-dac_override,-dac_read_search",
    "--bounding-set=-dac_override,-dac_read_search",
]


@pytest.mark.parametrize(
    ("mode", "status"),
    [(0o000, 2), (0o555, 1)],
    ids=["parent-not-enterable", "parent-read-only"],
)
def test_maildir_in_a_folder_we_may_not_use(
    tmp_path: Path, run_server: type[ServerProcess], mode: int, status: int
) -> None:
    """Issue 10: a 21-line traceback. Not enterable: found while parsing (status 2); read-only:
    when creating the Maildir (status 1). Either way one line."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(mode)
    maildir = locked / "sub" / "maildir"
    try:
        server = run_server(
            ["serve", "--listen", "127.0.0.1:0", "--maildir", str(maildir)],
            tmp_path,
            command=[*WITHOUT_DAC_OVERRIDE, sys.executable, "-m", "smtpkit"],
        )
        assert server.wait() == status
    finally:
        locked.chmod(0o700)
    assert server.stderr == f"smtpkit: error: --maildir {maildir}: Permission denied\n"


@pytest.mark.parametrize("case", ["folder-above-not-enterable", "existing-maildir-of-root"])
def test_user_who_cannot_write_the_maildir_is_refused_at_start(
    tmp_path: Path, run_server: type[ServerProcess], case: str
) -> None:
    """Issue 10: `--user nobody` started, then dropped every client with no reply."""
    if case == "folder-above-not-enterable":
        private = tmp_path / "private"
        private.mkdir(mode=0o700)
        box = private / "box"
        folder = box / "tmp"
    else:
        public = Path(tempfile.mkdtemp(prefix="smtpkit-cli-"))
        public.chmod(0o755)
        box = public / "box"
        MaildirHandler.prepare(box)  # root's, 0o755: nobody may not write
        folder = box / "tmp"
    try:
        server = run_server(
            ["serve", "--listen", "127.0.0.1:0", "--user", "nobody", "--maildir", str(box)],
            tmp_path,
        )
        assert server.wait() == 1
    finally:
        if case != "folder-above-not-enterable":
            shutil.rmtree(box.parent)
    assert server.stderr == (
        f"smtpkit: error: --maildir {box}: {folder} is not writable by --user nobody\n"
    )


def test_user_who_can_write_the_maildir_gets_its_mail(run_server: type[ServerProcess]) -> None:
    """The check above refuses only what would fail: a Maildir that smtpkit makes for nobody in
    a folder nobody may enter is written into after the switch."""
    public = Path(tempfile.mkdtemp(prefix="smtpkit-cli-"))
    try:
        public.chmod(0o755)
        box = public / "box"
        server = run_server(
            ["serve", "--listen", "127.0.0.1:0", "--user", "nobody", "--maildir", str(box)],
            public,
        )
        send(server.port())
        server.wait_for(re.compile(r"decision=accepted"))
        (message,) = maildir_files(box)
        assert message.stat().st_uid == pwd.getpwnam("nobody").pw_uid
        assert_clean_exit(server)
        assert "running as nobody" in server.stderr
    finally:
        shutil.rmtree(public)


def test_a_stderr_nobody_reads_never_stalls_serving(tmp_path: Path) -> None:
    """Issue 10: on a pipe nobody reads, the server froze after ~64 KiB of log lines. The log
    goes through a bounded queue and a writer thread; serving never waits for it."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("SMTPKIT_LOOP", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "smtpkit", "serve", "--listen", "127.0.0.1:0", "--handler", "sink"],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        while not (match := LISTENING.search(proc.stderr.readline())):
            assert proc.poll() is None
        port = int(match.group(2))
        # From here on nobody reads: 2 lines of ~100 bytes per session fill the 64 KiB pipe
        # several times over.
        for _ in range(800):
            with smtplib.SMTP("127.0.0.1", port, timeout=WAIT) as client:
                client.noop()
        send(port)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=WAIT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_port_in_use(tmp_path: Path, run_server: type[ServerProcess]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = run_server(
            ["serve", "--listen", f"127.0.0.1:{port}", "--handler", "sink"], tmp_path
        )
        assert server.wait() == 1
    assert f"smtpkit: error: cannot listen on 127.0.0.1 port {port}: Address already in use" in (
        server.stderr
    )
    assert server.stderr.count("smtpkit: error") == 1
    assert "Traceback" not in server.stderr


def test_transport_refusing_the_handler(tmp_path: Path, run_server: type[ServerProcess]) -> None:
    (tmp_path / "smtpkit_cli_async.py").write_text(
        "from smtpkit.handlers import Accept, Handler\n\n"
        "class Async(Handler):\n"
        "    async def data(self, message):\n"
        "        return Accept()\n"
    )
    server = run_server(
        ["serve", "--transport", "threads", "--handler", "smtpkit_cli_async:Async"], tmp_path
    )
    assert server.wait() == 2
    errors = [line for line in server.stderr.splitlines() if "error" in line]
    assert errors == [errors[0]] and errors[0].startswith("smtpkit: error: the threads transport")
    assert "Traceback" not in server.stderr


def test_hash_password_command(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-m", "smtpkit", "hash-password"],
        input="from stdin\n",
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=WAIT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert verify_password("from stdin", result.stdout.strip())


# ----------------------------------------------------------------------------- docs/cli.md


def test_docs_cover_every_flag() -> None:
    docs = (ROOT / "docs" / "cli.md").read_text()
    parser = _cli.build_parser()
    subparsers = next(
        action for action in parser._actions if isinstance(action, argparse._SubParsersAction)
    )
    for name, sub in subparsers.choices.items():
        assert f"smtpkit {name}" in docs
        for action in sub._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert f"`{flag}" in docs, f"{flag} of {name} is not in docs/cli.md"


def test_docs_configuration_examples_are_valid(tmp_path: Path) -> None:
    """Each TOML block of docs/cli.md reads without a problem, and means what its flags mean."""
    docs = (ROOT / "docs" / "cli.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", docs, re.S)
    assert len(blocks) >= 2
    for number, block in enumerate(blocks):
        path = tmp_path / f"example{number}.toml"
        path.write_text(block)
        assert read_config(str(path)).problems == (), block
    catcher = tmp_path / "catcher.toml"
    catcher.write_text(next(block for block in blocks if "catcher" in block))
    from_file = parse("--config", str(catcher))
    from_flags = parse(
        "--listen", "127.0.0.1:2525", "--log-level", "debug", "--maildir", "/tmp/mail"
    )
    assert comparable(from_file) == comparable(from_flags)


def test_docs_say_what_processes_does() -> None:
    """Issue 10: docs/cli.md said that --processes above 1 is an error, yet it works."""
    docs = (ROOT / "docs" / "cli.md").read_text()
    row = next(line for line in docs.splitlines() if line.startswith("| `--processes N`"))
    assert "error" not in row and "SO_REUSEPORT" in row
    command = parse("--processes", "2")
    assert command.processes == 2 and command.options.reuse_port is True


def test_docs_password_file_example() -> None:
    docs = (ROOT / "docs" / "cli.md").read_text()
    block = docs.split("# /etc/smtpkit/passwords", 1)[1].split("```", 1)[0]
    passwords = PasswordFile.parse("# /etc/smtpkit/passwords" + block)
    assert passwords.users == ("alice@example.org", "scanner", "test")
    assert passwords.check("alice@example.org", "correct horse battery staple")
    assert passwords.check("scanner", "scanner password")
    assert passwords.check("test", "test")


def test_maildir_per_recipient_delivers_into_one_maildir_per_recipient(tmp_path: Path) -> None:
    root = tmp_path / "boxes"
    command = parse_serve(["--maildir", str(root), "--maildir-per-recipient"])
    assert isinstance(command.factory, functools.partial)
    assert command.factory.keywords == {"per_recipient": True}
    assert command.per_recipient is True
    with running_server(command.factory) as server, smtplib.SMTP(*server.addresses[0]) as client:
        client.sendmail("a@example.org", ["bob@example.org", "Eve@Example.org"], MESSAGE)
    boxes = sorted(p.name for p in root.iterdir())
    assert boxes == ["bob@example.org", "eve@example.org"]
    for box in boxes:
        assert len(list((root / box / "new").iterdir())) == 1


def test_maildir_per_recipient_needs_the_maildir_handler() -> None:
    with pytest.raises(CLIError, match="--maildir-per-recipient is for --handler maildir"):
        parse_serve(["--handler", "sink", "--maildir-per-recipient"])
