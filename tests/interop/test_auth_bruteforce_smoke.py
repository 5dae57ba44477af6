"""A short run of the password-guessing benchmark (`benchmarks/auth_bruteforce.py`): with the
limit off one address has thousands of passwords checked; with the default of `--auth-file`,
exactly 10 per guessing address, and the legitimate user always logs in."""

from __future__ import annotations

import os
import subprocess
import sys

from support import ROOT


def test_auth_bruteforce_benchmark_short_run() -> None:
    script = ROOT / "benchmarks" / "auth_bruteforce.py"
    done = subprocess.run(
        [sys.executable, str(script), "--seconds", "3", "--guessers", "3"],
        capture_output=True, text=True, timeout=240,
        # as a user runs it: a script finds its sibling modules through sys.path[0]
        env={k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    rows = {
        line.split(" | ")[0].removeprefix("| "): line.split(" | ")
        for line in done.stdout.splitlines()
        if line.startswith("| ") and "(" in line
    }
    off, default = rows["limit off (max_failures = 0)"], rows["default (--auth-file)"]
    assert int(off[1].split()[0].replace(",", "")) > 10, done.stdout
    assert default[1].startswith("10 ("), done.stdout  # one address: its 10, then 421s
    assert default[4].startswith("checked 30, limited "), done.stdout  # 3 addresses x 10
