"""Read a server's CPU time and memory from /proc, for the whole process tree.

Why /proc rather than psutil: it adds no dependency, and it is exactly what the numbers mean on
Linux, the only platform the benchmark targets. Every reading covers the process and its live
descendants, so a multi-process server (``--processes N``) is measured as a whole.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

PROC = Path("/proc")
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Offsets into the fields that follow the ")" closing the command name in /proc/PID/stat.
# (Field numbers in proc(5) are 1-based and count pid and comm, hence the "- 3".)
_PPID = 4 - 3
_UTIME, _STIME, _CUTIME, _CSTIME = 14 - 3, 15 - 3, 16 - 3, 17 - 3


def _stat_fields(pid: int) -> list[str] | None:
    """The fields after the command name; None when the process is gone.

    The command name may hold spaces and parentheses, so split after the last ")".
    """
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text[text.rindex(")") + 2 :].split()


def process_tree(root: int) -> list[int]:
    """The root pid and every live descendant (one scan of /proc, so bounded by its size)."""
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[_PPID]), []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def cpu_seconds(root: int) -> float:
    """User plus system CPU of the tree, including children it has already reaped.

    cutime/cstime hold only waited-for, dead children, and a live child is counted through its
    own utime/stime, so nothing is counted twice.
    """
    ticks = 0
    for pid in process_tree(root):
        fields = _stat_fields(pid)
        if fields is not None:
            ticks += sum(int(fields[i]) for i in (_UTIME, _STIME, _CUTIME, _CSTIME))
    return ticks / CLK_TCK


def _status_kib(pid: int, key: str) -> int:
    """One ``Vm*`` line of /proc/PID/status, in KiB (0 when the process is gone)."""
    try:
        lines = (PROC / str(pid) / "status").read_text().splitlines()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    for line in lines:
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def rss_kib(root: int) -> int:
    """Resident set size now, summed over the tree."""
    return sum(_status_kib(pid, "VmRSS") for pid in process_tree(root))


def peak_rss_kib(root: int) -> int:
    """High-water RSS (VmHWM), summed over the tree: a fresh server per run makes it per run."""
    return sum(_status_kib(pid, "VmHWM") for pid in process_tree(root))


def open_files_limit(pid: int) -> int | None:
    """The soft RLIMIT_NOFILE a process runs with, to check the idle scenario can work."""
    try:
        lines = (PROC / str(pid) / "limits").read_text().splitlines()
    except (FileNotFoundError, ProcessLookupError):
        return None
    for line in lines:
        if line.startswith("Max open files"):
            soft = line.split()[3]
            return None if soft == "unlimited" else int(soft)
    return None


def raise_open_files_limit(wanted: int) -> int:
    """Lift the soft RLIMIT_NOFILE to ``wanted`` (and the hard one too when we may); return it.

    10,000 idle sessions need 10,000 descriptors on each side. Children inherit the limit, so
    raising it in the harness covers every server it starts, smtpkit's included.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    try:
        new_hard = wanted if hard == resource.RLIM_INFINITY else max(hard, wanted)
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, new_hard))
    except (ValueError, OSError):  # not root: go as far as the hard limit allows
        limit = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
