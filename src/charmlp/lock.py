"""One writer per run directory: an advisory `fcntl.flock` on DIR/.charmlp.lock.

The kernel holds the lock for the open file, so a writer killed with SIGKILL releases it at
once; the file it leaves behind only names the dead holder, and the next writer takes it over.
The file is removed on release while still locked, and a writer checks after locking that the
path still names the file it locked (else it retries), so removal cannot let two writers in.
POSIX only (Linux, macOS): where `fcntl` is missing the lock is not taken.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType

from .errors import CharmlpError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

LOCK = ".charmlp.lock"


def _holder(raw: str) -> str:
    """`pid 123 on host, charmlp train, since 04:12:33 UTC` from the lock file's JSON."""
    try:
        info = json.loads(raw)
        return f"pid {info['pid']} on {info['host']}, `{info['command']}`, since {info['since']}"
    except (ValueError, KeyError, TypeError):
        return "a process that left no details"


class RunDirLock:
    """`with RunDirLock(dir, "charmlp train"):` — refuse (one CharmlpError line) if another holds it.
    The directory must exist (`checkpoint.make_run_dir` makes a new one)."""

    def __init__(self, run_dir: str | Path, command: str) -> None:
        self.dir = Path(run_dir)
        self.path = self.dir / LOCK
        self.command = command
        self.fd: int | None = None
        self.stale: str | None = None  # the holder a killed writer left in the file, if any

    def acquire(self) -> RunDirLock:
        if fcntl is None or self.fd is not None:
            return self
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
                os.close(fd)
                raise CharmlpError(
                    f"{self.dir} is being written by another charmlp process ({holder}); "
                    "wait for it to finish, or pass another directory"
                ) from None
            try:  # the holder before us may have removed the file between our open and our lock
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        left = os.pread(fd, 4096, 0).decode("utf-8", "replace")
        if left.strip():  # a writer killed before it could release: the kernel has freed its lock
            self.stale = _holder(left)
            print(f"note: {self.dir} was locked by {self.stale}, which has gone; taking the lock over", file=sys.stderr)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                "since": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)  # while still locked: see the module docstring
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> RunDirLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()

