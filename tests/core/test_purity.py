"""smtp_core is pure: stdlib only, and no I/O, clock or thread modules (DESIGN.md section 1)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import smtp_core

CORE = Path(smtp_core.__file__).parent
REPO = CORE.parent
FORBIDDEN = {"socket", "ssl", "select", "selectors", "asyncio", "threading", "time"}
MODULES = sorted(CORE.glob("*.py"))


def imported_modules(path: Path) -> set[str]:
    """The top-level names of the absolute imports in one file, at any depth."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_package_has_modules() -> None:
    assert {p.name for p in MODULES} >= {"__init__.py", "_connection.py", "_state.py"}


@pytest.mark.parametrize("path", MODULES, ids=[p.name for p in MODULES])
def test_static_imports_are_stdlib_and_pure(path: Path) -> None:
    names = imported_modules(path)
    assert names <= set(sys.stdlib_module_names) | {"__future__"}, names
    assert not names & FORBIDDEN, names


def test_no_dynamic_imports() -> None:
    for path in MODULES:
        text = path.read_text()
        assert "__import__" not in text and "importlib" not in text, path.name


def loaded_modules(code: str) -> set[str]:
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return set(json.loads(result.stdout.splitlines()[-1]))


def test_importing_smtp_core_loads_nothing_forbidden() -> None:
    baseline = loaded_modules("pass")
    after = loaded_modules("import smtp_core\nsmtp_core.ServerConnection()")
    new = after - baseline
    assert "smtp_core" in new
    assert not {name.split(".")[0] for name in new} & FORBIDDEN, sorted(new)
    outside = {
        name
        for name in new
        if name.split(".")[0] not in sys.stdlib_module_names
        and name.split(".")[0] != "smtp_core"
        and not name.endswith("__mypyc")  # the compiled build's own runtime library
    }
    assert not outside, sorted(outside)
