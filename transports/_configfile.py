"""The TOML configuration file of `smtpkit serve --config FILE.toml` and `smtpkit check-config`.

Every server flag is a key of the top level (`max_message_size = 1000000`; a repeatable flag is
an array), and the deliverer is one `[deliver]` table: its `type` is what --handler takes, its
other keys the options of that ready handler. The file is read into the same dict the command
line is parsed into (destination -> value), so that the two merge key by key.

tomllib reports no line numbers for a valid file, so `_Lines` finds a key's line by scanning the
text, for problems reported as `file:line: key: why`.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, final

from smtpkit.handlers import Policy
from smtpkit.handlers.policies import ConfigError, build_policy, dns_servers_problem

from ._flags import BY_KEY, FLAGS, READY_HANDLERS, Flag, Kind, default_of

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

__all__ = ["FileSettings", "Problem", "read_config"]

#: The table of the deliverer.
DELIVER: Final = "deliver"
#: The array of policy tables, in order.
POLICY: Final = "policy"
#: The resolvers of every DNS lookup (a top-level key that is not a flag).
DNS_SERVERS: Final = "dns_servers"
#: A ready handler's own keys in [deliver] beside those of its flags: the relay's smarthost.
RELAY_HOST: Final = ("host", "port")

#: The options of each ready handler: [deliver] key -> flag.
_DELIVER_KEYS: Final[Mapping[str, Mapping[str, Flag]]] = {
    name: {flag.key: flag for flag in FLAGS if flag.handler == name and flag.key}
    for name in READY_HANDLERS
}

_TOML_NAMES: Final[Mapping[type, str]] = {
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    float: "a float",
    list: "an array",
    dict: "a table",
}


@final
@dataclass(frozen=True)
class Problem:
    """One thing wrong in the file; `line` 0 and `key` "" when it is about the whole file."""

    line: int
    key: str
    why: str

    def format(self, path: str) -> str:
        where = f"{path}:{self.line}" if self.line else path
        return f"{where}: {self.key}: {self.why}" if self.key else f"{where}: {self.why}"


@final
@dataclass(frozen=True)
class FileSettings:
    """What a configuration file says, in the command line's terms."""

    path: str
    #: The server flags it sets: destination -> value, as the command line parses them.
    values: dict[str, Any] = field(default_factory=dict)
    #: Its [deliver] table the same way; `handler` is its type.
    deliver: dict[str, Any] = field(default_factory=dict)
    #: destination -> "file:line: key", to say where a value came from.
    origins: dict[str, str] = field(default_factory=dict)
    #: Its [[policy]] tables, built, in order, and where each one is ("file:line: policy[N]").
    policies: tuple[tuple[Policy, str], ...] = ()
    problems: tuple[Problem, ...] = ()


class _Bad(Exception):
    """A value of the wrong type or out of range; the message says why."""


def read_config(path: str) -> FileSettings:
    """Read and check a configuration file. Never raises: what is wrong is in `problems`."""
    try:
        with open(path, "rb") as file:
            data = file.read()
        text = data.decode("utf-8")
        document = tomllib.loads(text)
    except OSError as exc:
        return FileSettings(path, problems=(Problem(0, "", f"cannot read: {exc.strerror}"),))
    except UnicodeDecodeError as exc:
        return FileSettings(path, problems=(Problem(0, "", f"not UTF-8 text ({exc.reason})"),))
    except tomllib.TOMLDecodeError as exc:
        return FileSettings(path, problems=(_syntax_problem(str(exc), text),))
    return _Reader(path, text).read(document)


def _syntax_problem(message: str, text: str) -> Problem:
    """tomllib's message ends with "(at line N, column M)", or "(at end of document)"."""
    match = re.search(r"\s*\(at (?:line (\d+), column \d+|end of document)\)$", message)
    if match is None:
        return Problem(0, "", f"invalid TOML: {message}")
    line = int(match.group(1)) if match.group(1) else len(text.splitlines())
    return Problem(line, "", f"invalid TOML: {message[: match.start()]}")


class _Reader:
    """Turns a parsed document into FileSettings, collecting every problem."""

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.lines = _Lines(text)
        self.problems: list[Problem] = []
        self.origins: dict[str, str] = {}

    def read(self, document: Mapping[str, Any]) -> FileSettings:
        values: dict[str, Any] = {}
        deliver: dict[str, Any] = {}
        policies: tuple[tuple[Policy, str], ...] = ()
        shared = {}
        why = dns_servers_problem(document.get(DNS_SERVERS, []))
        if why is not None:
            self._problem("", DNS_SERVERS, why)
        else:
            shared[DNS_SERVERS] = document.get(DNS_SERVERS, [])
        for key, value in document.items():
            flag = BY_KEY.get(key)
            if flag is not None:
                self._set(values, flag, value, "", key)
            elif key == DELIVER:
                deliver = self._deliver(value)
            elif key == POLICY:
                policies = self._policies(value, shared)
            elif key == DNS_SERVERS:
                pass
            elif key == "handler":
                self._problem("", key, 'not a key: give a [deliver] table with type = "..."')
            elif any(key in keys for keys in _DELIVER_KEYS.values()) or key in RELAY_HOST:
                self._problem("", key, "goes in the [deliver] table")
            else:
                self._problem("", key, _unknown(key, BY_KEY))
        return FileSettings(
            self.path, values, deliver, self.origins, policies, tuple(self.problems)
        )

    def _policies(
        self, tables: object, shared: Mapping[str, Any]
    ) -> tuple[tuple[Policy, str], ...]:
        """Each [[policy]] table built into its policy; a problem for each that is wrong."""
        if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
            self._problem("", POLICY, "expected [[policy]] tables")
            return ()
        built: list[tuple[Policy, str]] = []
        for number, table in enumerate(tables, 1):
            name = f"{POLICY}[{number}]"
            try:
                policy = build_policy(table, shared)
            except ConfigError as exc:
                if exc.key:
                    self._problem(name, exc.key, exc.why)
                else:  # about the table as a whole: its header's line
                    self.problems.append(Problem(self.lines.of(name, "type"), name, exc.why))
                continue
            line = self.lines.of(name, "type")
            built.append(
                (policy, f"{self.path}:{line}: {name}" if line else f"{self.path}: {name}")
            )
        return tuple(built)

    def _deliver(self, table: object) -> dict[str, Any]:
        if not isinstance(table, dict):
            self._problem("", DELIVER, f"expected a table, not {_toml_name(table)}")
            return {}
        kind = table.get("type")
        if kind is None:
            ready = ", ".join(READY_HANDLERS)
            self._problem(DELIVER, "type", f"missing: one of {ready}, or MODULE:ATTR")
            return {}
        if not isinstance(kind, str) or not (kind in READY_HANDLERS or ":" in kind):
            ready = ", ".join(READY_HANDLERS)
            shown = repr(kind) if isinstance(kind, str) else _toml_name(kind)
            self._problem(DELIVER, "type", f"{shown} is not one of {ready}, or MODULE:ATTR")
            return {}
        deliver: dict[str, Any] = {"handler": kind}
        self._origin("handler", DELIVER, "type")
        keys = _DELIVER_KEYS.get(kind, {})
        allowed = [*keys, *(RELAY_HOST if kind == "relay" else ())]
        for key, value in table.items():
            flag = keys.get(key)
            if flag is not None:
                self._set(deliver, flag, value, DELIVER, key)
            elif key in allowed:  # the relay's host and port
                pass
            elif key != "type":
                known = f"its keys: {', '.join(allowed)}" if allowed else "it has no other keys"
                self._problem(DELIVER, key, f"not a key of type {kind!r} ({known})")
        if kind == "relay":
            self._relay_host(table, deliver)
        return deliver

    def _relay_host(self, table: Mapping[str, Any], deliver: dict[str, Any]) -> None:
        """[deliver] host and port: the --relay HOST:PORT of the command line."""
        host = table.get("host")
        port = table.get("port", default_of(READY_HANDLERS["relay"], "port"))
        if host is None:
            self._problem(DELIVER, "host", "missing: the smarthost of type 'relay'")
        elif not isinstance(host, str) or not host.strip():
            self._problem(DELIVER, "host", f"expected a host name, not {_toml_name(host)}")
        elif isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            self._problem(DELIVER, "port", "expected a port number, 1 to 65535")
        else:
            deliver["relay"] = (host.strip(), port)
            self._origin("relay", DELIVER, "host")

    def _set(self, into: dict[str, Any], flag: Flag, value: object, table: str, key: str) -> None:
        try:
            if flag.repeat:
                if not isinstance(value, list):
                    raise _Bad(f"expected an array, not {_toml_name(value)}")
                into[flag.dest] = [_convert(flag.kind, item) for item in value]
            else:
                into[flag.dest] = _convert(flag.kind, value)
        except _Bad as exc:
            self._problem(table, key, str(exc))
        else:
            self._origin(flag.dest, table, key)

    def _origin(self, dest: str, table: str, key: str) -> None:
        line = self.lines.of(table, key)
        name = f"{table}.{key}" if table else key
        self.origins[dest] = f"{self.path}:{line}: {name}" if line else f"{self.path}: {name}"

    def _problem(self, table: str, key: str, why: str) -> None:
        name = f"{table}.{key}" if table else key
        self.problems.append(Problem(self.lines.of(table, key), name, why))


def _convert(kind: Kind, value: object) -> object:
    """A file's value through the same checks as the command line's text."""
    if not isinstance(value, kind.toml) or (isinstance(value, bool) and bool not in kind.toml):
        expected = " or ".join(_TOML_NAMES[t] for t in kind.toml)
        raise _Bad(f"expected {expected}, not {_toml_name(value)}")
    if kind.parse is None:  # a switch: true or false
        return value
    try:
        return kind.parse(str(value))
    except argparse.ArgumentTypeError as exc:
        raise _Bad(str(exc)) from None


def _toml_name(value: object) -> str:
    for cls, name in _TOML_NAMES.items():
        if isinstance(value, cls):
            return name
    return "a date or time"


def _unknown(key: str, known: Mapping[str, object]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f"unknown key (did you mean {close[0]}?)" if close else "unknown key"


class _Lines:
    """Where each key of a TOML text is: the first line that sets it, in its table."""

    _HEADER: Final = re.compile(r"\s*\[\[?\s*([^\]\[]+?)\s*\]\]?\s*(?:#.*)?$")
    _KEY: Final = re.compile(r"""\s*([A-Za-z0-9_-]+|"[^"]*"|'[^']*')\s*[.=]""")

    def __init__(self, text: str) -> None:
        self._keys: dict[tuple[str, str], int] = {}
        self._tables: dict[str, int] = {}
        arrays: dict[str, int] = {}  # [[name]] -> how many so far: the N of "name[N]"
        table = ""
        for number, line in enumerate(text.splitlines(), 1):
            header = self._HEADER.match(line)
            if header is not None:
                table = header.group(1).replace('"', "").replace("'", "")
                if line.lstrip().startswith("[["):
                    arrays[table] = arrays.get(table, 0) + 1
                    table = f"{table}[{arrays[table]}]"
                self._tables.setdefault(table, number)
                continue
            key = self._KEY.match(line)
            if key is not None:
                self._keys.setdefault((table, key.group(1).strip("\"'")), number)

    def of(self, table: str, key: str) -> int:
        """The line of `key` in `table` ("" for the top level), or of its table header; else
        of the table (an inline or dotted one); else 0."""
        name = f"{table}.{key}" if table else key
        line = self._keys.get((table, key)) or self._tables.get(name)
        if line is None and table:
            line = self._keys.get(("", table)) or self._tables.get(table)
        return line or 0
