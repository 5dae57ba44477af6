"""Optional compiled build: `SMTPKIT_MYPYC=1 pip install .` compiles smtp_core with mypyc.

Everything else lives in pyproject.toml; without the variable this is a pure-Python install.
The compiled engine passes the same tests (see .ci/run).
"""

import os

from setuptools import setup

ext_modules = []
if os.environ.get("SMTPKIT_MYPYC") == "1":
    from mypyc.build import mypycify

    ext_modules = mypycify(["smtp_core"], opt_level="3", group_name="smtp_core__mypyc")

setup(ext_modules=ext_modules)
