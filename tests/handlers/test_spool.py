"""The spool: memory up to the threshold, then a file in the instance's locked folder; the disk
budget; stale folders of dead instances removed, live ones never."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from smtpkit.transports._spool import Spooler

pytestmark = pytest.mark.timeout(60)


def spooler(tmp_path: Path, *, threshold: int = 100, max_bytes: int = 10_000) -> Spooler:
    s = Spooler(threshold=threshold, folder=tmp_path / "spool", max_bytes=max_bytes)
    s.start()
    return s


def files(s: Spooler) -> list[str]:
    assert s.folder is not None
    return sorted(os.listdir(s.folder))


def test_small_content_stays_in_memory(tmp_path: Path) -> None:
    s = spooler(tmp_path)
    spool = s.new()
    spool.write(b"a" * 60)
    spool.write(b"b" * 40)
    message = spool.message()
    assert message.path is None and bytes(message) == b"a" * 60 + b"b" * 40
    assert files(s) == [] and s.used == 0
    spool.discard()


def test_content_past_the_threshold_goes_to_a_file_and_is_removed(tmp_path: Path) -> None:
    s = spooler(tmp_path)
    spool = s.new()
    pieces = [bytes([65 + i]) * 30 for i in range(10)]
    for piece in pieces:
        spool.write(piece)
    message = spool.message()
    assert message.path is not None and Path(message.path).parent == s.folder
    assert bytes(message) == b"".join(pieces) and message.size == 300
    assert oct(os.stat(message.path).st_mode & 0o777) == "0o600"
    assert s.used == 300
    spool.discard()
    spool.discard()  # idempotent
    assert files(s) == [] and s.used == 0


def test_past_the_budget_the_content_is_dropped(tmp_path: Path) -> None:
    s = spooler(tmp_path, threshold=10, max_bytes=250)
    first = s.new()
    first.write(b"x" * 200)
    second = s.new()
    second.write(b"y" * 40)
    assert not second.overflowed
    second.write(b"y" * 40)  # 200 + 80 > 250: crossed now
    assert second.overflowed and second.size == 80
    assert s.used == 200 and len(files(s)) == 1  # its file is gone at once
    second.write(b"y" * 1000)  # counted, never stored
    assert second.size == 1080 and s.used == 200
    first.discard()
    second.discard()
    assert s.used == 0 and files(s) == []


def test_stop_removes_the_folder(tmp_path: Path) -> None:
    s = spooler(tmp_path, threshold=0)
    spool = s.new()
    spool.write(b"left behind")
    folder = s.folder
    assert folder is not None and folder.is_dir()
    s.stop()
    assert not folder.exists()
    spool.discard()  # after stop: nothing to do, no error


def test_folders_are_made_on_first_use_without_start(tmp_path: Path) -> None:
    s = Spooler(threshold=0, folder=tmp_path / "lazy")
    spool = s.new()
    spool.write(b"x")
    assert s.folder is not None and s.folder.parent == tmp_path / "lazy"
    spool.discard()
    s.stop()


_HOLDER = textwrap.dedent(
    """
    import sys, time
    from smtpkit.transports._spool import Spooler
    s = Spooler(threshold=0, folder=sys.argv[1])
    s.start()
    spool = s.new()
    spool.write(b"in flight")
    print(s.folder, flush=True)
    if sys.argv[2] == "crash":
        import os
        os._exit(0)          # like kill -9: nothing cleaned up
    sys.stdin.read()         # live until the test closes stdin
    """
)


def _holder(parent: Path, mode: str) -> tuple[subprocess.Popen[str], Path]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(parent), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONSAFEPATH": "1"},
    )
    assert proc.stdout is not None
    return proc, Path(proc.stdout.readline().strip())


def test_a_dead_instance_folder_is_removed_a_live_one_never(tmp_path: Path) -> None:
    parent = tmp_path / "spool"
    live, live_folder = _holder(parent, "live")
    dead, dead_folder = _holder(parent, "crash")
    dead.wait()
    try:
        assert dead_folder.is_dir() and os.listdir(dead_folder)  # the crash left its file
        s = Spooler(folder=parent)
        s.start()
        assert not dead_folder.exists()
        assert live_folder.is_dir() and os.listdir(live_folder)
        assert s.folder is not None and s.folder.is_dir()
        s.stop()
    finally:
        assert live.stdin is not None
        live.stdin.close()
        live.wait()


def test_the_default_folder_is_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    s = Spooler()
    s.start()
    assert s.parent == tmp_path / f"smtpkit-spool-{os.getuid()}"
    assert oct(os.stat(s.parent).st_mode & 0o777) == "0o700"
    s.stop()
    other = Spooler()
    os.chmod(other.parent, 0o777)
    with pytest.raises(PermissionError):
        other.start()
