"""`pip install .` as a user does it, and a user's project living beside it (issue 9).

The package goes into a fresh venv (it sees this machine's packages, so nothing is fetched),
built from a copy of the checkout, not as the editable install the other tests use. Then a
user's project with its own `handlers` and `transports` packages runs its own pytest suite
(our pytest11 plugin loaded alongside) and serves its own handler with `smtpkit serve`.
"""

from __future__ import annotations

import os
import shutil
import smtplib
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from support import ROOT, WAIT, Process

pytestmark = pytest.mark.timeout(300)

#: What the copy of the checkout leaves out: what is not part of the package.
NOT_PACKAGED = (
    *(".git", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "maildir"),
    *("tests", "benchmarks", "docs", "examples"),
)


def user_env() -> dict[str, str]:
    """The environment a user has: no PYTHONPATH, no PYTHONSAFEPATH (the current folder is on
    sys.path, where a user's own `handlers` package would shadow ours if we installed one)."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}


def run(*command: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a command as a user would, in `cwd`, and check that it succeeds."""
    done = subprocess.run(
        [str(c) for c in command],
        cwd=cwd,
        env=user_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, f"{command}:\n{done.stdout}\n{done.stderr}"
    return done


class Venv:
    """A venv: its interpreter and its site-packages folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.python = root / "bin" / "python"
        probe = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
        self.purelib = Path(run(self.python, "-c", probe, cwd=root).stdout.strip())


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Venv, set[str]]:
    """A fresh venv with `pip install .` done in it; and what that added to its site-packages."""
    folder = tmp_path_factory.mktemp("install")
    source = folder / "smtpkit-src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_PACKAGED))
    venv_command = [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip"]
    run(*venv_command, folder / "venv", cwd=folder)
    venv = Venv(folder / "venv")
    before = set(os.listdir(venv.purelib))
    run(sys.executable, "-m", "pip", "--python", venv.python, "install", "-q", "--no-deps",
        "--no-build-isolation", source, cwd=folder)  # fmt: skip
    return venv, set(os.listdir(venv.purelib)) - before


def test_pip_install_adds_only_our_two_names(installed: tuple[Venv, set[str]]) -> None:
    venv, added = installed
    top_level = {name for name in added if not name.endswith(".dist-info")}
    assert top_level == {"smtp_core", "smtpkit"}, sorted(added)
    assert [name for name in added if name.endswith(".dist-info")] == [
        next(name for name in added if name.startswith("smtpkit-"))
    ]
    probe = "import smtpkit.transports as t; print(t.__file__)"
    where = run(venv.python, "-c", probe, cwd=venv.root).stdout
    assert where.startswith(str(venv.purelib)), where  # the installed copy, not the checkout


USER_HANDLERS = '''
"""The user's own package that happens to be called `handlers`."""
OWNER = "the user's handlers"
'''

USER_TRANSPORTS = '''
"""The user's own package that happens to be called `transports` (no `testing` in it)."""
OWNER = "the user's transports"
'''

USER_APP = '''
import handlers
from smtpkit.handlers import Accept, Handler


class H(Handler):
    """Says, in its reply, whose `handlers` module it imported."""

    def data(self, message):
        return Accept(f"delivered by {handlers.OWNER}")
'''

USER_TESTS = """
import smtplib

import handlers
import transports

import app


def test_own_packages():
    assert handlers.OWNER == "the user's handlers"
    assert transports.OWNER == "the user's transports"


def test_own_handler_through_our_plugin(smtp_server_factory):
    server = smtp_server_factory(app.H)
    with smtplib.SMTP(server.host, server.port) as client:
        client.ehlo()
        client.mail("a@b.example")
        client.rcpt("c@d.example")
        code, text = client.data(b"Subject: hi\\r\\n\\r\\nhi\\r\\n")
    assert (code, text) == (250, b"2.0.0 delivered by the user's handlers")
"""


@pytest.fixture
def user_project(tmp_path: Path) -> Path:
    """The user's project, in the folder `smtpkit` processes run in."""
    for name, text in {
        "handlers/__init__.py": USER_HANDLERS,
        "transports/__init__.py": USER_TRANSPORTS,
        "app.py": USER_APP,
        "test_app.py": USER_TESTS,
    }.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(textwrap.dedent(text))
    return tmp_path


def test_serve_help_beside_a_users_packages(
    installed: tuple[Venv, set[str]], user_project: Path
) -> None:
    venv, _ = installed
    done = run(venv.python, "-m", "smtpkit", "serve", "--help", cwd=user_project)
    assert done.stdout.startswith("usage: ")
    assert "--handler" in done.stdout


def test_users_own_pytest_suite_runs(installed: tuple[Venv, set[str]], user_project: Path) -> None:
    venv, _ = installed
    done = run(venv.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=user_project)
    assert "2 passed" in done.stdout, done.stdout


def test_serve_a_handler_that_imports_the_users_handlers(
    installed: tuple[Venv, set[str]],
    user_project: Path,
    smtpkit: Callable[..., Process],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    venv, _ = installed
    for name in ("PYTHONPATH", "PYTHONSAFEPATH"):
        monkeypatch.delenv(name, raising=False)
    server = smtpkit(
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--handler",
        "app:H",
        command=[venv.root / "bin" / "smtpkit"],
    )
    with smtplib.SMTP(server.host, server.port, timeout=WAIT) as client:
        client.ehlo()
        client.mail("a@b.example")
        client.rcpt("c@d.example")
        code, text = client.data(b"Subject: hi\r\n\r\nhi\r\n")
    assert (code, text) == (250, b"2.0.0 delivered by the user's handlers"), server.log()
