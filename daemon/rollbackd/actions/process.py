"""One child process, run with a deadline, bounded memory and a truthful ending.

:func:`run` starts an argv (never a shell) in a session of its own, with stdin
closed, and reads its output while it runs. Three promises hold whatever the
child does:

- **Memory is bounded.** Output is kept as its head and its tail
  (:class:`Capture`); what lies between is counted, never stored, so a
  command that prints gigabytes costs a few kilobytes.
- **Success is the exit status.** The run ends when the command exits, not
  when its output reaches end-of-file: a command that exits 0 but leaves a
  background child holding stdout (``sleep 600 &``, a restart script that
  starts the app) is finished once it exits and :data:`LINGER` has passed for
  its last words. What it left running is reported (:class:`Leftover`), not
  killed: starting a service in the background is a legitimate thing for a
  restart script to do. Output such a process still holds is drained and
  discarded in the background, so that it neither blocks on a full pipe nor
  dies of SIGPIPE on its next log line.
- **A timeout stops the whole process group**: SIGTERM, then SIGKILL after a
  grace, as before.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import IO

from rollbackd.text import elided, one_line, utf8_pieces

KILL_GRACE = timedelta(seconds=3)
"""How long a timed-out process group has between SIGTERM and SIGKILL."""

LINGER = timedelta(milliseconds=500)
"""How long output is still read after the command exits: its last lines, not a background
process that keeps its output open."""

POLL_SECONDS = 0.05
"""How often the runner looks whether the command has exited while it waits for output, when
the kernel cannot tell it (no pidfd): with one, the command's exit wakes the runner at once."""

CHUNK = 64 * 1024
"""Bytes read from a pipe at a time (a Linux pipe holds 64 KiB)."""

MAX_DRAINS = 32
"""Pipes held open by processes a command left running that are drained at the same time;
beyond this they are closed, so a command run again and again cannot exhaust descriptors."""

LISTED = 5
"""How many left-running processes a summary names; the others are counted."""

_drains = threading.BoundedSemaphore(MAX_DRAINS)


class Capture:
    """The first and the last bytes written to a stream, and how many were dropped between.

    The head is a quarter of ``limit`` and the tail the rest: the end of a
    failing build is what a person needs, its beginning says what ran.
    Memory stays under about twice ``limit`` whatever is added.
    """

    def __init__(self, limit: int) -> None:
        self.head_limit = max(limit // 4, 0)
        self.tail_limit = max(limit - self.head_limit, 0)
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.head_limit - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if not chunk:
            return
        self.tail += chunk
        if len(self.tail) > 2 * self.tail_limit:
            del self.tail[: len(self.tail) - self.tail_limit]

    def _kept_tail(self) -> bytes:
        return bytes(self.tail[-self.tail_limit :]) if self.tail_limit else b""

    @property
    def dropped(self) -> int:
        """Bytes written that are in neither the head nor the tail."""
        return self.total - len(self.head) - len(self._kept_tail())

    def text(self) -> str:
        """What was kept, decoded as UTF-8 with replacement, with a line saying what was cut."""
        tail = self._kept_tail()
        dropped = self.dropped
        if not dropped:
            return (bytes(self.head) + tail).decode("utf-8", errors="replace")
        head, rest, split = utf8_pieces(bytes(self.head), tail)
        return elided(head, rest, dropped + split, "bytes of output")


@dataclass(frozen=True)
class Leftover:
    """A process a command left running in its session when it exited."""

    pid: int
    command: str

    def __str__(self) -> str:
        return f"pid {self.pid} ({self.command})"


@dataclass(frozen=True)
class Finished:
    """How a command ended, and what it said.

    ``status`` is the exit status (negative: the signal that killed it), None
    only when it did not exit even after SIGKILL. ``output`` is stdout, with
    stderr merged in unless ``errors`` holds it separately. ``held_open``: when
    reading stopped, a process the command left running still had its output
    open (the rest of that output is discarded). ``cut``: bytes of output (both
    streams) left out between head and tail, 0 when the output is whole. ``pid``: the
    command's process id, also its session's id (for :func:`left_running` when the
    run did not look for leftovers itself).
    """

    status: int | None
    output: str
    errors: str
    timed_out: bool
    left_running: tuple[Leftover, ...]
    held_open: bool
    linger: timedelta
    cut: int = 0
    pid: int = 0

    def left_summary(self) -> str:
        """'left 1 process running: pid 1234 (sleep 600)', or '' when it left none."""
        return left_summary(self.left_running)

    def notes(self, name: str) -> str:
        """Lines for the step's output about what outlived ``name`` ('' when nothing did)."""
        lines: list[str] = []
        if self.left_running:
            lines.append(left_note(name, self.left_running))
        if self.held_open:
            seconds = f"{self.linger.total_seconds():g}s"
            lines.append(
                f"[rollbackd] {seconds} after `{name}` exited a process it started still held "
                "its output open: capture stopped there and later output is discarded "
                "(redirect that process's output to a file to keep it)"
            )
        return "\n".join(lines)


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path | None,
    timeout: timedelta,
    limit: int,
    merge_stderr: bool = True,
    grace: timedelta = KILL_GRACE,
    linger: timedelta = LINGER,
    leftovers: bool = True,
) -> Finished:
    """Run ``argv`` in its own session; at most ``limit`` bytes of each stream are kept.

    ``leftovers=False`` leaves out the look for processes the command left
    running (a pass over ``/proc``): a caller running many commands in a row
    looks for all of them at once afterwards with :func:`left_running`.

    Raises what :class:`subprocess.Popen` raises when the command cannot start
    (OSError, ValueError for a NUL byte, SubprocessError); every other outcome
    is a :class:`Finished`.
    """
    process = subprocess.Popen(  # noqa: S603 -- the callers' argv comes from the config or is git's own, never a shell
        list(argv),
        bufsize=0,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
        cwd=cwd,
        env=dict(env),
        start_new_session=True,
    )
    try:
        streams = _Streams(process, limit)
    except OSError:  # no descriptor left for the selector: stop the command, say why
        _signal_group(process.pid, signal.SIGKILL)
        for file in (process.stdout, process.stderr):
            if file is not None:
                file.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=max(grace.total_seconds(), 0.001))
        raise
    try:
        grace_s = max(grace.total_seconds(), 0.001)
        linger_s = max(linger.total_seconds(), 0.0)
        exited = streams.pump(time.monotonic() + max(timeout.total_seconds(), 0.001), linger_s)
        timed_out = not exited
        if timed_out:
            _signal_group(process.pid, signal.SIGTERM)
            exited = streams.pump(time.monotonic() + grace_s, grace_s)
            if not exited or _members({process.pid}, _GROUP):
                _signal_group(process.pid, signal.SIGKILL)
                exited = streams.pump(time.monotonic() + grace_s, linger_s)
                _await_group_gone(process.pid, time.monotonic() + grace_s)
        left = left_running([process.pid])[process.pid] if leftovers else ()
        return Finished(
            status=process.returncode,
            output=streams.output.text(),
            errors=streams.errors.text() if streams.errors is not None else "",
            timed_out=timed_out,
            left_running=left,
            held_open=streams.open,
            linger=linger,
            cut=streams.output.dropped + (0 if streams.errors is None else streams.errors.dropped),
            pid=process.pid,
        )
    finally:
        streams.release()


class _Streams:
    """The command's pipes and its exit, waited for together through one selector.

    The exit is a pidfd (Linux 5.3), readable once the command has exited: the
    runner wakes the moment a command ends, where polling for it cost up to
    :data:`POLL_SECONDS`, or a doubling sleep in ``Popen.wait``, per command.
    Without a pidfd (an older kernel, no descriptor left) it polls.
    """

    def __init__(self, process: subprocess.Popen[bytes], limit: int) -> None:
        self.process = process
        self.selector = selectors.DefaultSelector()
        self.exit_fd: int | None = None
        self.exit_watched = False
        self.files: dict[int, IO[bytes]] = {}
        self.captures: dict[int, Capture] = {}
        self.output = Capture(limit)
        self.errors: Capture | None = None if process.stderr is None else Capture(limit)
        for file, capture in ((process.stdout, self.output), (process.stderr, self.errors)):
            if file is not None and capture is not None:
                fd = file.fileno()
                self.files[fd] = file
                self.captures[fd] = capture
                self.selector.register(fd, selectors.EVENT_READ)
        with contextlib.suppress(OSError, AttributeError):
            self.exit_fd = os.pidfd_open(process.pid)
            self.selector.register(self.exit_fd, selectors.EVENT_READ)
            self.exit_watched = True

    @property
    def open(self) -> bool:
        return bool(self.files)

    def pump(self, until: float, linger: float) -> bool:
        """Read until ``until``, or until the command has exited and its output is closed or
        ``linger`` seconds have passed since; whether it has exited."""
        exited_at: float | None = None
        while True:
            now = time.monotonic()
            if exited_at is None and self.process.poll() is not None:
                exited_at = now
            end = until if exited_at is None else min(until, exited_at + linger)
            if now >= end or (exited_at is not None and not self.files):
                return exited_at is not None
            watched = exited_at is None and self.exit_watched
            wait = end - now if watched else min(POLL_SECONDS, end - now)
            if self.files or watched:
                self._read(wait)
            else:  # it closed its output and runs on
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(timeout=wait)

    def _read(self, wait: float) -> None:
        for key, _ in self.selector.select(wait):
            fd = int(key.fd)
            if fd == self.exit_fd:  # it exited: poll() reaps it on the next turn
                self.selector.unregister(fd)
                self.exit_watched = False
                continue
            try:
                chunk = os.read(fd, CHUNK)
            except OSError:
                chunk = b""
            if chunk:
                self.captures[fd].add(chunk)
            else:
                self.selector.unregister(fd)
                self.files.pop(fd).close()

    def release(self) -> None:
        """Close the selector; pipes still held open are drained in the background."""
        self.selector.close()
        if self.exit_fd is not None:
            os.close(self.exit_fd)
        for file in self.files.values():
            _drain(file)
        self.files.clear()


def _drain(file: IO[bytes]) -> None:
    """Read ``file`` to its end in a daemon thread, discarding it; close it if too many are."""
    if not _drains.acquire(blocking=False):
        file.close()
        return

    def drain() -> None:
        try:
            with contextlib.suppress(OSError):
                while os.read(file.fileno(), CHUNK):
                    pass
        finally:
            file.close()
            _drains.release()

    threading.Thread(target=drain, name="rollbackd-drain", daemon=True).start()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(OSError):  # the group is gone already
        os.killpg(pgid, sig)


def _await_group_gone(pgid: int, until: float) -> None:
    """Wait (until ``until``) for the members of a group just sent SIGKILL to be gone: a
    process dies when it next runs, and on a busy machine one still listed a moment later
    would be reported as left running by the command, though rollbackd killed it."""
    while _members({pgid}, _GROUP) and time.monotonic() < until:
        time.sleep(0.01)


def left_running(leaders: Sequence[int]) -> dict[int, tuple[Leftover, ...]]:
    """The live processes in the session each of ``leaders`` started, other than the leader.

    One pass over ``/proc`` for them all: a caller running many short commands
    in a row (the git executor) pays for it once, not once per command.
    """
    found = _members(set(leaders), _SESSION)
    return {
        leader: tuple(m for m in found.get(leader, ()) if m.pid != leader) for leader in leaders
    }


def left_summary(left: Sequence[Leftover]) -> str:
    """'left 1 process running: pid 1234 (sleep 600)', or '' when ``left`` is empty."""
    if not left:
        return ""
    count = len(left)
    listed = ", ".join(str(one) for one in left[:LISTED])
    more = f" and {count - LISTED} more" if count > LISTED else ""
    noun = "process" if count == 1 else "processes"
    return f"left {count} {noun} running: {listed}{more}"


def left_note(name: str, left: Sequence[Leftover]) -> str:
    """The transcript's line naming what ``name`` left running (``left`` is not empty)."""
    them = "it" if len(left) == 1 else "them"
    return f"[rollbackd] `{name}` {left_summary(left)}; rollbackd leaves {them} be"


_GROUP = 2
_SESSION = 3
"""Fields of ``/proc/PID/stat`` after ``comm)``: state, ppid, process group, session."""


def _members(leaders: set[int], field: int) -> dict[int, list[Leftover]]:
    """Live processes whose process group (``_GROUP``) or session (``_SESSION``) is one of
    ``leaders``, by leader, in the order of their ids.

    A session id, like a process group id, is not given to a new process while
    any member is alive, so this never names an unrelated process. Zombies are
    left out: they run nothing, and an init that does not reap would show them.
    It reads one ``stat`` file per process on the machine, with bare system
    calls (a third of what ``Path.read_bytes`` costs).
    """
    wanted = {str(leader).encode(): leader for leader in leaders}
    found: dict[int, list[Leftover]] = {}
    try:
        names = os.listdir("/proc")  # noqa: PTH208 -- names only, no Path per process
    except OSError:
        return found
    for pid in sorted(int(name) for name in names if name.isdigit()):
        try:
            descriptor = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            stat = os.read(descriptor, 4096)
        except OSError:
            continue
        finally:
            os.close(descriptor)
        fields = stat.rpartition(b")")[2].split()
        if len(fields) <= field or fields[0] == b"Z" or fields[field] not in wanted:
            continue
        found.setdefault(wanted[fields[field]], []).append(Leftover(pid, _command_line(pid)))
    return found


def _command_line(pid: int, limit: int = 100) -> str:
    """The command line of ``pid`` on one printable line of at most ``limit`` characters."""
    try:
        raw = Path("/proc", str(pid), "cmdline").read_bytes()
        if not raw:
            raw = Path("/proc", str(pid), "comm").read_bytes()
    except OSError:
        return "?"
    return one_line(raw.replace(b"\0", b" ").decode("utf-8", errors="replace"), limit) or "?"
