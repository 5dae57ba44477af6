"""This checkout against an earlier commit: same load, same minutes, rounds alternating.

Ratios to aiosmtpd (run.py) move with the machine; a change's own cost is clearer when the old
code runs right beside the new. The old commit is checked out into a temporary git worktree and
served from there (`python -m smtpkit`, or `python -m transports` before the package names
changed), with the same handler and flags; the two servers take turns, `--rounds` times each,
on fresh ports. Reported per transport: the median msg/s (smtp-source's messages over its wall
time) and server CPU µs per message of each, and new over old.

    python3 benchmarks/against.py 8759a7f --transports threads asyncio --rounds 5

Server and client are pinned to different CPUs when `taskset` is there and the machine has two,
which takes some of the scheduler's noise out of a 2-core run.

`--instructions` counts instead what the server executes per message, with valgrind's
callgrind (`apt-get install valgrind`): the difference between a run of 1,600 and one of 400
messages, divided by 1,200, so that start-up cancels out. Unlike time, that count hardly moves
with the machine's load; it leaves out the kernel's share (system calls), which is the same
for both.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import procstat
import run

_PIN = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
#: Messages of the two runs whose difference `--instructions` divides.
_SHORT, _LONG = 400, 1600
_VALGRIND_READY = 120.0  # seconds: Python starts about 50 times slower under callgrind


def _pinned(cmd: list[str], cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu), *cmd] if _PIN else cmd


def _server(code: Path, transport: str, port: int) -> tuple[list[str], dict[str, str]]:
    """The serve command of the code in `code` (a checkout) on `port`, on the stdlib loop,
    and its environment (that code first on the path)."""
    module = "smtpkit" if (code / "smtpkit" / "__main__.py").exists() else "transports"
    cmd = [
        run.PY, "-m", module, "serve", "--listen", f"{run.HOST}:{port}",
        "--hostname", run.HOSTNAME, "--log-level", "WARNING", "--handler", "sink",
        "--transport", transport, "--no-uvloop",
    ]  # fmt: skip
    return cmd, {**os.environ, "PYTHONPATH": str(code), "SMTPKIT_LOOP": "asyncio"}


def _one(
    code: Path,
    transport: str,
    scenario: run.Scenario,
    smtp_source: str,
    ports: set[int],
    logs: Path,
) -> tuple[float, float]:
    """One run: (msg/s, server CPU µs per message)."""
    port = run.free_port(ports)
    cmd, env = _server(code, transport, port)
    log_path = logs / f"server-{port}.log"
    with log_path.open("wb") as log, run.running_server(_pinned(cmd, 0), env, log, cwd=code) as pid:
        run.wait_ready(pid, port, log_path)
        before = procstat.cpu_seconds(pid)
        source = [*scenario.source_flags(), f"{run.HOST}:{port}"]
        started = time.monotonic()
        subprocess.run(_pinned([smtp_source, *source], 1), check=True, capture_output=True)
        wall = time.monotonic() - started
        cpu = procstat.cpu_seconds(pid) - before
    return scenario.messages / wall, cpu / scenario.messages * 1e6


def _instructions(
    code: Path,
    transport: str,
    scenario: run.Scenario,
    smtp_source: str,
    ports: set[int],
    logs: Path,
) -> float:
    """Instructions the server executes per message (callgrind's Ir, user space only)."""
    totals = []
    for messages in (_SHORT, _LONG):
        port = run.free_port(ports)
        serve, env = _server(code, transport, port)
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={logs}/callgrind.{port}"]
        cmd += serve
        log_path = logs / f"valgrind-{port}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(cmd, env=env, cwd=code, stdout=log, stderr=log)
            try:
                run.wait_ready(proc.pid, port, log_path, timeout=_VALGRIND_READY)
                load = dataclasses.replace(scenario, messages=messages, sessions=4)
                source = [smtp_source, *load.source_flags(), f"{run.HOST}:{port}"]
                subprocess.run(source, check=True, capture_output=True)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(_VALGRIND_READY)
        found = re.search(r"Collected : (\d+)", log_path.read_text())
        if found is None:
            raise SystemExit(f"no instruction count in {log_path}")
        totals.append(int(found.group(1)))
    return (totals[1] - totals[0]) / (_LONG - _SHORT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("commit", help="the earlier commit (anything git rev-parse takes)")
    parser.add_argument("--transports", nargs="+", default=["threads", "asyncio"])
    parser.add_argument("--scenario", default="keepalive", help="a run.py scenario (sink ones)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--messages", type=int, help="smtp-source -m (default: the scenario's)")
    parser.add_argument(
        "--instructions", action="store_true", help="count instructions per message (valgrind)"
    )
    args = parser.parse_args(argv)
    scenario = next((s for s in run.SCENARIOS if s.name == args.scenario), None)
    if scenario is None or scenario.profile != "sink":
        parser.error(f"not a sink scenario of run.py: {args.scenario}")
    if args.messages:
        sessions = min(scenario.sessions, args.messages)
        scenario = dataclasses.replace(scenario, messages=args.messages, sessions=sessions)
    smtp_source = run.find_smtp_source(install=False)
    with tempfile.TemporaryDirectory(prefix="smtpkit-against-") as tmp:
        old = Path(tmp) / "old"
        subprocess.run(
            ["git", "-C", str(run.ROOT), "worktree", "add", "--detach", str(old), args.commit],
            check=True,
            capture_output=True,
        )
        try:
            ports: set[int] = set()
            if args.instructions:
                print("| transport | old instructions/msg | new instructions/msg | new/old |")
                print("|---|---|---|---|")
                for transport in args.transports:
                    count = {
                        who: _instructions(code, transport, scenario, smtp_source, ports, Path(tmp))
                        for who, code in (("old", old), ("new", run.ROOT))
                    }
                    print(
                        f"| {transport} | {count['old']:,.0f} | {count['new']:,.0f} | "
                        f"{count['new'] / count['old']:.3f} |",
                        flush=True,
                    )
                return 0
            print(f"{scenario.name}: {' '.join(scenario.source_flags())}, pinned: {_PIN}")
            print("| transport | old msg/s | new msg/s | new/old | old µs/msg | new µs/msg |")
            print("|---|---|---|---|---|---|")
            for transport in args.transports:
                runs: dict[str, list[tuple[float, float]]] = {"old": [], "new": []}
                for _ in range(args.rounds):
                    for who, code in (("old", old), ("new", run.ROOT)):
                        runs[who].append(
                            _one(code, transport, scenario, smtp_source, ports, Path(tmp))
                        )
                rate = {w: statistics.median(r for r, _ in runs[w]) for w in runs}
                cpu = {w: statistics.median(c for _, c in runs[w]) for w in runs}
                print(
                    f"| {transport} | {rate['old']:,.0f} | {rate['new']:,.0f} | "
                    f"{rate['new'] / rate['old']:.3f} | {cpu['old']:.0f} | {cpu['new']:.0f} |",
                    flush=True,
                )
                for who in runs:
                    rates = ", ".join(f"{r:,.0f}" for r, _ in runs[who])
                    print(f"<!-- {transport} {who}: {rates} -->", file=sys.stderr)
        finally:
            subprocess.run(
                ["git", "-C", str(run.ROOT), "worktree", "remove", "--force", str(old)],
                check=False,
                capture_output=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
