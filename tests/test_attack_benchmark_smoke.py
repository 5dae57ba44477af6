"""A smoke run of the attack benchmark (`benchmarks/attack.py --quick`, one transport): it
runs every scenario, meets every target, and prints its table. (The benchmark itself is
`python3 benchmarks/attack.py`, not part of the tests.)"""

from __future__ import annotations

import os
import subprocess
import sys

from support import ROOT

SCENARIOS = ("slowloris", "stress", "honest", "stuck-hook", "tls-relay")


def test_attack_benchmark_quick_run() -> None:
    script = ROOT / "benchmarks" / "attack.py"
    done = subprocess.run(
        [sys.executable, str(script), "--quick", "--transports", "asyncio"],
        capture_output=True, text=True, timeout=240,
        # as a user runs it: a script finds its sibling modules through sys.path[0]
        env={k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")][1:]
    assert [row.split(" | ")[0] for row in rows] == [f"| {s}" for s in SCENARIOS], done.stdout
    assert all(row.endswith("| ok |") for row in rows), done.stdout
