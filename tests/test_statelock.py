"""The state directory's lock: one rollbackd acts on a journal at a time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rollbackd.errors import StateDirBusy
from rollbackd.statelock import StateLock

HOLD = """
import sys, time
from pathlib import Path
from rollbackd.statelock import StateLock
StateLock(Path(sys.argv[1])).acquire("rollbackd run")
print("held", flush=True)
time.sleep(60)
"""


def test_a_second_rollbackd_is_refused_with_the_holder_named(tmp_path: Path) -> None:
    """The second one to ask is told which process holds the state directory, and what it is."""
    first = StateLock(tmp_path).acquire("rollbackd run")
    try:
        with pytest.raises(StateDirBusy) as refused:
            StateLock(tmp_path).acquire("rollbackd rollback web")
        assert f"pid {os.getpid()}: rollbackd run" in str(refused.value)
        assert str(tmp_path) in str(refused.value)
    finally:
        first.release()
    StateLock(tmp_path).acquire("rollbackd rollback web").release()


def test_a_holder_killed_with_sigkill_leaves_no_stale_lock(tmp_path: Path) -> None:
    """A crash frees the state directory at once: the next start is not refused."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(StateDirBusy, match=f"pid {holder.pid}: rollbackd run"):
            StateLock(tmp_path).acquire("rollbackd run")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
    deadline = time.monotonic() + 5
    while True:
        try:
            StateLock(tmp_path).acquire("rollbackd run").release()
            break
        except StateDirBusy:
            assert time.monotonic() < deadline, "the lock outlived its holder"
            time.sleep(0.05)
