"""One rollbackd at a time acts on a state directory: an exclusive lock on it.

``rollbackd run`` and a local ``rollbackd rollback`` take the lock before they
touch the journal and hold it while they run; a second one is refused with the
holder named (its pid and what it is). The lock is ``flock`` on
``state_dir/rollbackd.lock``: the kernel drops it when the holder exits, however
it exits (SIGKILL included), so a crash never leaves a stale lock behind.
Commands that only read (``incidents``, ``report``) take no lock.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType
from typing import Self

from rollbackd.errors import StateDirBusy

LOCK_FILE = "rollbackd.lock"


class StateLock:
    """The exclusive lock on one state directory, held from :meth:`acquire` to :meth:`release`."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self, holder: str) -> Self:
        """Take the lock for ``holder`` (e.g. ``rollbackd run``); StateDirBusy if taken."""
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            raise StateDirBusy(f"cannot lock {self.path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            named = _holder(fd)
            os.close(fd)
            raise StateDirBusy(
                f"{self.state_dir} is in use by another rollbackd ({named}): one rollbackd "
                "acts on a journal at a time"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise StateDirBusy(f"cannot lock {self.path}: {exc.strerror or exc}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}: {holder}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        """Let go of the lock (the process exiting does too)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


def _holder(fd: int) -> str:
    """What the holder wrote into the lock file: its pid and what it is."""
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", errors="replace").strip()
    except OSError:
        text = ""
    return text or "a process that has not said who it is yet"
