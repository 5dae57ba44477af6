"""docs/core.md shows the state table that smtp_core/_state.py really has."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "state_diagram.py"
DOC = ROOT / "docs" / "core.md"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_docs_core_md_is_up_to_date() -> None:
    result = run("--check")
    assert result.returncode == 0, result.stderr


def test_check_notices_a_stale_diagram_and_a_rewrite_fixes_it(tmp_path: Path) -> None:
    stale = tmp_path / "core.md"
    stale.write_text(
        DOC.read_text(encoding="utf-8").replace("CONNECT --> GREETED", "CONNECT --> READY"),
        encoding="utf-8",
    )
    assert run("--check", "--path", str(stale)).returncode == 1
    assert run("--path", str(stale)).returncode == 0
    assert stale.read_text(encoding="utf-8") == DOC.read_text(encoding="utf-8")
    assert run("--check", "--path", str(stale)).returncode == 0
