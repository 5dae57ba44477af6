"""The build backend: setuptools, plus mypy in the build environment when SMTPKIT_MYPYC=1.

`SMTPKIT_MYPYC=1 pip install .` compiles smtp_core with mypyc (see setup.py). pip builds in an
isolated environment that has only what the backend asks for, so the backend asks for mypy
exactly when the compiled build is wanted; the plain build needs nothing but setuptools.
"""

from __future__ import annotations

import os
from typing import Any

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F403 - the backend is setuptools' own

def _compiled() -> bool:
    return os.environ.get("SMTPKIT_MYPYC") == "1"


# setuptools works out its requirements by running setup.py, which imports mypyc when it is
# asked for: that run can't happen before mypy is installed, and it adds nothing here.
def get_requires_for_build_wheel(config_settings: dict[str, Any] | None = None) -> list[str]:
    if _compiled():
        return ["mypy>=1.10"]
    return _setuptools.get_requires_for_build_wheel(config_settings)


def get_requires_for_build_editable(config_settings: dict[str, Any] | None = None) -> list[str]:
    if _compiled():
        return ["mypy>=1.10"]
    return _setuptools.get_requires_for_build_editable(config_settings)
