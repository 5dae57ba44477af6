"""Fixtures for the example tests: run an example as a real process (the DNS stub is the
shared one in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from support import Process


@pytest.fixture
def run_example(smtpkit: Callable[..., Process]) -> Callable[..., Process]:
    """run_example("gateway.py", *args): start it on a free port; stopped at teardown."""

    def start(script: str, *args: str) -> Process:
        return smtpkit(*args, script=script)

    return start
