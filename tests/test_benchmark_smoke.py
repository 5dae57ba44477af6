"""A smoke run of the benchmark script with tiny counts: it runs, every run succeeds, and it
writes its report. (The benchmark itself is `python3 benchmarks/run.py`, not part of the tests.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_benchmark_script_smoke_run(tmp_path: Path) -> None:
    out = tmp_path / "results"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--no-docs",
         "--out", str(out), "--servers", "smtpkit-asyncio", "smtpkit-threads", "aiosmtpd",
         "--scenarios", "keepalive", "rcpt50", "idle"],
        capture_output=True, text=True, timeout=300,
        # as a user runs it: a script finds its sibling modules through sys.path[0]
        env={k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    summary = json.loads((out / "latest.json").read_text())
    runs = summary["runs"]
    assert {r["server"] for r in runs} == {"smtpkit-asyncio", "smtpkit-threads", "aiosmtpd"}
    failed = [r for r in runs if not r["ok"]]
    assert not failed, failed
    keepalive = summary["medians"]["keepalive"]["smtpkit-asyncio"]["metrics"]
    assert keepalive["msgs_per_s"] > 0
    assert "| smtpkit-asyncio |" in result.stdout


def _worktrees() -> set[str]:
    listing = subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "list", "--porcelain"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return {line for line in listing.stdout.splitlines() if line.startswith("worktree ")}


def test_against_script_smoke_run() -> None:
    """benchmarks/against.py serves an earlier commit from a worktree beside this checkout:
    HEAD against itself, a few messages, one round; the worktree is removed again."""
    before = _worktrees()
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "against.py"), "HEAD", "--rounds", "1",
         "--transports", "threads", "--messages", "40"],
        capture_output=True, text=True, timeout=300,
        env={k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    row = next(line for line in result.stdout.splitlines() if line.startswith("| threads |"))
    old_rate, new_rate = (float(cell.replace(",", "")) for cell in row.split("|")[2:4])
    assert old_rate > 0 and new_rate > 0
    assert _worktrees() <= before
