"""Benchmark smtpkit against aiosmtpd 1.4 in one run, on loopback, with Postfix's smtp-source.

    python3 benchmarks/run.py [--rounds 3] [--quick] [--servers ...] [--scenarios ...]

Each round runs every selected server in turn for each scenario, each on a fresh server process
and a fresh port; the report gives medians across rounds and ratios against aiosmtpd measured in
the same run. The servers and scenarios are the two tables just below: edit them, not the code.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Protocol, TypeVar

import procstat
import report

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable
HOST = "127.0.0.1"  # the only target, ever
HOSTNAME = "bench.localhost"  # given to every server, so none looks up its FQDN per session

# ---------------------------------------------------------------------------------------------
# Servers. "{port}" is filled in per run. The smtpkit commands follow DESIGN.md section 5; the
# flags and env vars marked "assumed" are not in it yet: change them here if the CLI differs.
# ---------------------------------------------------------------------------------------------
# Warnings only, as aiosmtpd_server.py logs (no logging set up): neither logs a line per message.
SMTPKIT = (
    PY, "-m", "smtpkit", "serve", "--listen", HOST + ":{port}", "--hostname", HOSTNAME,
    "--log-level", "WARNING",
)  # fmt: skip
AIOSMTPD = (PY, str(HERE / "aiosmtpd_server.py"), "--port", "{port}")

# Extra arguments per (family, scenario profile).
PROFILE_ARGS: dict[tuple[str, str], tuple[str, ...]] = {
    ("smtpkit", "sink"): ("--handler", "sink"),
    ("smtpkit", "blocking"): ("--handler", "blocking_handler:SleepyHandler", "--workers", "32"),
    # Assumed flag: --max-per-ip 0 lifts the per-IP limit (loopback is meant to be exempt anyway).
    ("smtpkit", "idle"): ("--handler", "sink", "--max-connections", "20000", "--max-per-ip", "0"),
    ("aiosmtpd", "sink"): (),
    ("aiosmtpd", "blocking"): ("--sleep-ms", "20", "--workers", "32"),
    ("aiosmtpd", "idle"): (),
}


@dataclass(frozen=True)
class Server:
    """One column of the comparison.

    ``baseline`` names the aiosmtpd server its headline ratio is taken against: uvloop against
    uvloop, the stdlib loop (and trio, and threads) against aiosmtpd on the stdlib loop.
    """

    name: str
    family: str
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    baseline: str = "aiosmtpd"
    #: Run smtpkit with smtp_core compiled by mypyc (SMTPKIT_MYPYC=1), built once per run.
    compiled: bool = False


SERVERS: tuple[Server, ...] = (
    # SMTPKIT_LOOP=asyncio is the CLI's --no-uvloop: the stdlib event loop even with uvloop in.
    Server(
        "smtpkit-asyncio", "smtpkit", ("--transport", "asyncio"), (("SMTPKIT_LOOP", "asyncio"),)
    ),
    Server(
        "smtpkit-asyncio-uvloop",
        "smtpkit",
        ("--transport", "asyncio"),
        (("SMTPKIT_LOOP", "uvloop"),),
        baseline="aiosmtpd-uvloop",
    ),
    Server(
        "smtpkit-asyncio-uvloop-mypyc",
        "smtpkit",
        ("--transport", "asyncio"),
        (("SMTPKIT_LOOP", "uvloop"),),
        baseline="aiosmtpd-uvloop",
        compiled=True,
    ),
    Server(
        "smtpkit-anyio-asyncio",
        "smtpkit",
        ("--transport", "anyio", "--anyio-backend", "asyncio"),
        (("SMTPKIT_LOOP", "asyncio"),),
    ),
    Server("smtpkit-anyio-trio", "smtpkit", ("--transport", "anyio", "--anyio-backend", "trio")),
    Server("smtpkit-threads", "smtpkit", ("--transport", "threads")),
    Server("aiosmtpd", "aiosmtpd"),
    Server("aiosmtpd-uvloop", "aiosmtpd", ("--uvloop",), baseline="aiosmtpd-uvloop"),
)
#: Where the mypyc build goes (under the gitignored results folder).
COMPILED_DIR = HERE / "results" / "mypyc-build"
FAMILY_COMMAND = {"smtpkit": SMTPKIT, "aiosmtpd": AIOSMTPD}


# ---------------------------------------------------------------------------------------------
# Scenarios: smtp-source flags, or our idle-session client.
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    profile: str  # key into PROFILE_ARGS: "sink", "blocking" or "idle"
    sessions: int  # smtp-source -s, or idle sessions
    messages: int = 0  # smtp-source -m
    length: int = 1024  # smtp-source -l
    recipients: int = 1  # smtp-source -r
    keepalive: bool = True  # smtp-source -d

    def scaled(self, quick: bool) -> Scenario:
        """The scenario itself, or the tiny version a smoke test can afford."""
        if not quick:
            return self
        if self.profile == "idle":
            return Scenario(**{**asdict(self), "sessions": QUICK_IDLE_SESSIONS})
        messages = min(self.messages, QUICK_MESSAGES, max(1, QUICK_BYTES // self.length))
        return Scenario(
            **{**asdict(self), "messages": messages, "sessions": min(self.sessions, messages)}
        )

    def source_flags(self) -> list[str]:
        """The smtp-source options (no -c: its counter output only costs time)."""
        flags = ["-d"] if self.keepalive else []
        flags += ["-s", str(self.sessions), "-m", str(self.messages), "-l", str(self.length)]
        if self.recipients > 1:
            flags += ["-r", str(self.recipients)]
        return [*flags, "-M", HOSTNAME, "-f", "bench@localhost", "-t", "sink@localhost"]


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("keepalive", "keep-alive, 1 KiB", "sink", sessions=20, messages=20_000),
    Scenario("connect", "connect per message", "sink", sessions=20, messages=4000, keepalive=False),
    Scenario("1mb", "1 MB bodies", "sink", sessions=8, messages=400, length=1_000_000),
    Scenario("rcpt50", "50 recipients", "sink", sessions=10, messages=2000, recipients=50),
    Scenario("blocking", "blocking 20 ms hook, 32 workers", "blocking", sessions=64, messages=6400),
    Scenario("idle", "idle sessions after EHLO", "idle", sessions=10_000),
)
QUICK_MESSAGES = 50
QUICK_BYTES = 10_000_000  # per quick run, so that 1 MB bodies stay quick too
QUICK_IDLE_SESSIONS = 50
IDEAL_BLOCKING_RATE = 32 / 0.020  # workers / hook time, messages per second

READY_TIMEOUT = 20.0  # seconds for a server to answer its first 220
STOP_TIMEOUT = 5.0  # seconds between SIGTERM and SIGKILL
RUN_TIMEOUT = {False: 600.0, True: 60.0}  # seconds per scenario run, full / quick
MAX_OPEN_FILES = 20_000
POSTFIX_PRESEED = "postfix postfix/main_mailer_type select No configuration\n"


class RunError(Exception):
    """A server run that failed: reported in the results, never fatal to the benchmark."""


@dataclass
class RunResult:
    server: str
    scenario: str
    round: int
    ok: bool
    error: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Setup
# ---------------------------------------------------------------------------------------------
def find_smtp_source(install: bool) -> str:
    """smtp-source's path, installing Debian's postfix first when it is missing."""
    found = shutil.which("smtp-source") or shutil.which("smtp-source", path="/usr/sbin")
    if found or not install:
        if not found:
            raise SystemExit("smtp-source not found (install postfix, or drop --no-install)")
        return found
    if os.geteuid() != 0:
        raise SystemExit("smtp-source missing: run as root, or `apt-get install postfix`")
    print("installing postfix (smtp-source) from Debian ...", file=sys.stderr)
    subprocess.run(["debconf-set-selections"], input=POSTFIX_PRESEED, text=True, check=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "-q", "postfix"], check=True, env=env, timeout=900)
    return find_smtp_source(install=False)


def preflight(servers: Sequence[Server]) -> list[str]:
    """Warnings about missing pieces: each such run fails on its own, but say why up front."""
    notes = []
    families = {s.family for s in servers}
    if "smtpkit" in families and not (ROOT / "smtpkit" / "__main__.py").exists():
        notes.append("smtpkit CLI (smtpkit/__main__.py) not there yet: its runs will fail")
    modules = ["matplotlib"] + (["aiosmtpd"] if "aiosmtpd" in families else [])
    modules += ["uvloop"] if any("uvloop" in s.name for s in servers) else []
    for module in modules:
        if not _importable(module):
            notes.append(f"python module {module} missing: pip install -e '.[bench]'")
    return notes


def _importable(module: str) -> bool:
    probe = [PY, "-c", f"import {module}"]
    return subprocess.run(probe, capture_output=True, timeout=60).returncode == 0


# ---------------------------------------------------------------------------------------------
# One server process
# ---------------------------------------------------------------------------------------------
def free_port(used: set[int]) -> int:
    """A port no earlier run of this benchmark used, so no run sees another's TIME_WAITs."""
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind((HOST, 0))
            port = int(sock.getsockname()[1])
        if port not in used:
            used.add(port)
            return port
    raise RunError("no fresh port found")


def server_command(server: Server, scenario: Scenario, port: int | str) -> list[str]:
    base = (
        FAMILY_COMMAND[server.family]
        + server.args
        + PROFILE_ARGS[(server.family, scenario.profile)]
    )
    return [arg.replace("{port}", str(port)) for arg in base]


def server_env(server: Server, scenario: Scenario) -> dict[str, str]:
    """The repo root for ``-m smtpkit`` (or the compiled build, which holds all three
    packages); benchmarks/ too when ``blocking_handler`` is needed."""
    code = COMPILED_DIR if server.compiled else ROOT
    paths = [str(code)] + ([str(HERE)] if scenario.profile == "blocking" else [])
    path = os.pathsep.join(filter(None, [*paths, os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **dict(server.env)}


@contextmanager
def running_server(
    cmd: list[str], env: dict[str, str], log: IO[bytes], cwd: Path = ROOT
) -> Iterator[int]:
    """Start the server in its own process group; always stop the whole group on the way out.

    `cwd` comes first on the server's sys.path (``python -m``), so a compiled server runs from
    its build folder, where the sources can't shadow the compiled modules."""
    proc = subprocess.Popen(
        cmd,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield proc.pid
        if proc.poll() is not None:
            raise RunError(f"server died during the run (status {proc.returncode})")
    finally:
        stop_group(proc)


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group, then SIGKILL it if it has not gone in time."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(STOP_TIMEOUT)
            return
        except subprocess.TimeoutExpired:
            continue


def wait_ready(pid: int, port: int, log_path: Path, timeout: float = READY_TIMEOUT) -> None:
    """Poll until the server sends its 220, or fail fast if it exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists() or _is_zombie(pid):
            raise RunError(f"server exited at start: {last_line(log_path)}")
        try:
            with socket.create_connection((HOST, port), timeout=1.0) as sock:
                sock.settimeout(2.0)
                with sock.makefile("rb") as reader:
                    greeting = reader.readline()
                if greeting.startswith(b"220"):
                    sock.sendall(b"QUIT\r\n")
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RunError(f"server not ready after {timeout:.0f}s: {last_line(log_path)}")


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def last_line(path: Path) -> str:
    """The last line a server or client wrote, to say why it failed."""
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no output)"
    return lines[-1][:300] if lines else "(no output)"


# ---------------------------------------------------------------------------------------------
# Load generators
# ---------------------------------------------------------------------------------------------
def run_smtp_source(
    smtp_source: str, scenario: Scenario, port: int, timeout: float, log_path: Path
) -> float:
    """Run smtp-source to completion and return its wall time (it reports no timing itself)."""
    cmd = [smtp_source, *scenario.source_flags(), f"{HOST}:{port}"]
    with log_path.open("wb") as log:
        started = time.monotonic()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        try:
            status = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise RunError(f"smtp-source still running after {timeout:.0f}s") from None
        finally:
            if proc.poll() is None:  # timed out, or we are being interrupted
                proc.kill()
                proc.wait()
        wall = time.monotonic() - started
    if status != 0:
        raise RunError(f"smtp-source exit {status}: {last_line(log_path)}")
    return wall


def run_idle(
    scenario: Scenario, port: int, pid: int, timeout: float, log_path: Path
) -> dict[str, float]:
    """Run idle_clients.py in its own process (its own descriptors) and parse its JSON."""
    limit = procstat.open_files_limit(pid)
    if limit is not None and limit < scenario.sessions + 64:
        raise RunError(f"server RLIMIT_NOFILE {limit} is below {scenario.sessions} sessions")
    cmd = [
        PY,
        str(HERE / "idle_clients.py"),
        "--port",
        str(port),
        "--pid",
        str(pid),
        "--sessions",
        str(scenario.sessions),
        "--timeout",
        str(timeout * 0.8),
    ]
    with log_path.open("wb") as log:
        try:
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RunError(f"idle client still running after {timeout:.0f}s") from None
    if proc.returncode != 0:
        raise RunError(f"idle client exit {proc.returncode}: {last_line(log_path)}")
    return {k: float(v) for k, v in json.loads(proc.stdout).items()}


# ---------------------------------------------------------------------------------------------
# One run, one round, the whole benchmark
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    smtp_source: str
    quick: bool
    log_dir: Path
    used_ports: set[int] = field(default_factory=set)


def run_one(server: Server, scenario: Scenario, rnd: int, settings: Settings) -> RunResult:
    """One fresh server, one scenario: its figures, or the reason it failed."""
    stem = settings.log_dir / f"r{rnd}-{scenario.name}-{server.name}"
    server_log, client_log = stem.with_suffix(".server.log"), stem.with_suffix(".client.log")
    try:
        port = free_port(settings.used_ports)
        cmd, env = server_command(server, scenario, port), server_env(server, scenario)
        cwd = COMPILED_DIR if server.compiled else ROOT
        with server_log.open("wb") as log, running_server(cmd, env, log, cwd) as pid:
            wait_ready(pid, port, server_log)
            metrics = measure(scenario, port, pid, settings, client_log)
    except RunError as exc:
        return RunResult(server.name, scenario.name, rnd, ok=False, error=str(exc))
    return RunResult(server.name, scenario.name, rnd, ok=True, metrics=metrics)


def measure(
    scenario: Scenario, port: int, pid: int, settings: Settings, client_log: Path
) -> dict[str, float]:
    """Server CPU before/after and peak RSS around the load generator's run."""
    timeout = RUN_TIMEOUT[settings.quick]
    cpu_before = procstat.cpu_seconds(pid)
    if scenario.profile == "idle":
        metrics = run_idle(scenario, port, pid, timeout, client_log)
        units = scenario.sessions
        metrics["cpu_us_per_session"] = (procstat.cpu_seconds(pid) - cpu_before) * 1e6 / units
    else:
        wall = run_smtp_source(settings.smtp_source, scenario, port, timeout, client_log)
        cpu = procstat.cpu_seconds(pid) - cpu_before
        metrics = {
            "wall_s": wall,
            "msgs_per_s": scenario.messages / wall,
            "cpu_us_per_msg": cpu * 1e6 / scenario.messages,
        }
    metrics["peak_rss_mib"] = procstat.peak_rss_kib(pid) / 1024
    return metrics


def run_all(
    servers: Sequence[Server], scenarios: Sequence[Scenario], rounds: int, settings: Settings
) -> list[RunResult]:
    """Rounds outermost, so that drifting machine load spreads over every server alike."""
    results = []
    for rnd in range(1, rounds + 1):
        for scenario in scenarios:
            for server in servers:
                result = run_one(server, scenario, rnd, settings)
                print(progress_line(result), file=sys.stderr, flush=True)
                results.append(result)
    return results


def progress_line(result: RunResult) -> str:
    head = f"round {result.round} {result.scenario:>9} {result.server:<24}"
    if not result.ok:
        return f"{head} FAILED: {result.error}"
    return head + " " + "  ".join(f"{k}={v:,.2f}" for k, v in sorted(result.metrics.items()))


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
class Named(Protocol):
    @property
    def name(self) -> str: ...


T = TypeVar("T", bound=Named)


def _matches(entry: Named, token: str, table: Sequence[Named]) -> bool:
    """An exact name selects that entry alone; a name no entry has exactly selects by prefix
    ("smtpkit" = every smtpkit server), and so does a trailing "*" ("aiosmtpd*")."""
    if token.endswith("*"):
        return entry.name.startswith(token[:-1])
    if any(e.name == token for e in table):
        return entry.name == token
    return entry.name.startswith(token + "-")


def select(names: list[str] | None, table: Sequence[T], what: str) -> list[T]:
    """The entries the names select (see `_matches`); all of them for no names."""
    if not names:
        return list(table)
    tokens = [t for name in names for t in name.split(",") if t]
    unknown = [t for t in tokens if not any(_matches(e, t, table) for e in table)]
    if unknown or not tokens:
        known = ", ".join(e.name for e in table)
        raise SystemExit(f"unknown {what}: {', '.join(unknown)}; known: {known}")
    return [e for e in table if any(_matches(e, t, table) for t in tokens)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, help="rounds (default 3, or 1 with --quick)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke test: -m {QUICK_MESSAGES}, {QUICK_IDLE_SESSIONS} idle sessions, 1 round",
    )
    parser.add_argument("--servers", nargs="+", help="names or families (smtpkit, aiosmtpd)")
    parser.add_argument("--scenarios", nargs="+", help="scenario names")
    parser.add_argument(
        "--docs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="update docs/performance.{md,png} (default: unless --quick)",
    )
    parser.add_argument("--out", type=Path, default=HERE / "results", help="results folder")
    parser.add_argument("--no-install", action="store_true", help="never apt-get postfix")
    parser.add_argument("--list", action="store_true", help="print the tables and exit")
    return parser.parse_args(argv)


def list_tables() -> None:
    """Print the exact commands and flags, e.g. to check them against the smtpkit CLI."""
    for server in SERVERS:
        env = " ".join(f"{k}={v}" for k, v in server.env)
        for profile in ("sink", "blocking", "idle"):
            probe = Scenario("probe", "", profile, sessions=1)
            cmd = " ".join(server_command(server, probe, "PORT")).replace(PY, "python3")
            print(f"{server.name} [{profile}]: {env} {cmd}".replace(":  ", ": "))
    for scenario in SCENARIOS:
        how = " ".join(scenario.source_flags()) if scenario.profile != "idle" else "idle_clients"
        print(f"{scenario.name} [{scenario.profile}]: {how}")


def exit_on_sigterm(signum: int, frame: object) -> None:
    """Turn SIGTERM into SystemExit, so that the finally blocks stop the servers."""
    raise SystemExit(128 + signum)


def build_compiled() -> None:
    """Build smtp_core with mypyc into COMPILED_DIR (pip install --target), from this tree."""
    print(f"building the mypyc variant into {COMPILED_DIR} ...", file=sys.stderr)
    if COMPILED_DIR.exists():
        shutil.rmtree(COMPILED_DIR)
    subprocess.run(
        [PY, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(COMPILED_DIR), str(ROOT)],
        env={**os.environ, "SMTPKIT_MYPYC": "1", "PIP_ROOT_USER_ACTION": "ignore"},
        check=True,
        timeout=900,
    )  # fmt: skip
    compiled = list((COMPILED_DIR / "smtp_core").glob("_connection*.so"))
    if not compiled:
        raise SystemExit("the mypyc build produced no compiled smtp_core")


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    args = parse_args(argv)
    if args.list:
        list_tables()
        return 0
    servers = select(args.servers, SERVERS, "server")
    scenarios = [s.scaled(args.quick) for s in select(args.scenarios, SCENARIOS, "scenario")]
    rounds = args.rounds or (1 if args.quick else 3)
    if not 1 <= rounds <= 50:
        raise SystemExit("--rounds must be between 1 and 50")
    procstat.raise_open_files_limit(MAX_OPEN_FILES)  # inherited by every server and client
    smtp_source = find_smtp_source(install=not args.no_install)
    if any(server.compiled for server in servers):
        build_compiled()
    for note in preflight(servers):
        print("note:", note, file=sys.stderr)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    log_dir = args.out / "logs" / stamp
    log_dir.mkdir(parents=True, exist_ok=True)
    settings = Settings(smtp_source, args.quick, log_dir)
    runs = run_all(servers, scenarios, rounds, settings)
    summary = report.summarize(runs, servers, scenarios, rounds, args.quick, IDEAL_BLOCKING_RATE)
    write_docs = args.docs if args.docs is not None else not args.quick
    print(report.write_outputs(summary, args.out, stamp, ROOT / "docs", write_docs))
    return 0 if any(r.ok for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
