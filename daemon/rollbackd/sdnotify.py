"""A tiny systemd notify client: ``Type=notify``, the watchdog, reload and stop.

The protocol is one datagram of newline-separated ``KEY=VALUE`` assignments sent
to the ``AF_UNIX`` socket named by ``$NOTIFY_SOCKET`` (an absolute path, or
``@name`` for the abstract namespace); see sd_notify(3). Outside systemd that
variable is unset and every call is a no-op, so the daemon calls these methods
unconditionally.

Every send is best-effort: it never raises, and returns whether the datagram
left. A notification that cannot be delivered must not stop a rollback.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping
from datetime import timedelta

from rollbackd.text import one_line

STATUS_MAX_CHARS = 200
"""``STATUS=`` is shown by ``systemctl status`` on one line; longer text is cut."""

SEND_TIMEOUT_SECONDS = 1.0
"""A wedged PID 1 with a full socket queue blocks a send at most this long."""


def _address(value: str | None) -> bytes | None:
    """The socket address ``$NOTIFY_SOCKET`` names, or None if it names none we can use."""
    if not value:
        return None
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode("utf-8", "surrogateescape")
    if value.startswith("/"):
        return os.fsencode(value)
    return None  # e.g. vsock:… (systemd in a VM); not needed on the machines we run on


class SystemdNotifier:
    """Tells systemd about the service's state through ``$NOTIFY_SOCKET``.

    ``environ`` is read once, in the constructor; tests pass a plain dict.
    """

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        self._address = _address(environ.get("NOTIFY_SOCKET"))
        self._watchdog = _watchdog_interval(environ)

    @property
    def enabled(self) -> bool:
        """Whether there is a notify socket to send to (the service runs under systemd)."""
        return self._address is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` assignments as one datagram; True if it was sent."""
        if self._address is None or not assignments:
            return False
        message = "\n".join(assignments).encode("utf-8", "replace")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.settimeout(SEND_TIMEOUT_SECONDS)
                sock.sendto(message, self._address)
        except OSError:  # no socket, refused, full queue, path too long: best-effort
            return False
        return True

    def ready(self) -> bool:
        """Start-up is complete: config loaded, journal open, server listening."""
        return self.notify("READY=1")

    def status(self, text: str) -> bool:
        """A one-line status for ``systemctl status`` (newlines removed, ≤ 200 chars)."""
        return self.notify(f"STATUS={one_line(text, STATUS_MAX_CHARS)}")

    def watchdog(self) -> bool:
        """Keep-alive ping; send it at least every half :meth:`watchdog_interval`."""
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        """Shutdown has begun (SIGTERM): the step in progress is being finished."""
        return self.notify("STOPPING=1")

    def reloading(self) -> bool:
        """The config is being reloaded (SIGHUP); send :meth:`ready` when done.

        ``MONOTONIC_USEC`` is what ``Type=notify-reload`` (systemd ≥ 253) expects
        with ``RELOADING=1``; older versions ignore the extra field.
        """
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={now_usec}")

    def watchdog_interval(self) -> timedelta | None:
        """``WatchdogSec=`` of the unit if the watchdog is meant for this process, else None."""
        return self._watchdog


def _watchdog_interval(environ: Mapping[str, str]) -> timedelta | None:
    """``$WATCHDOG_USEC`` as a timedelta, if set for this process (``$WATCHDOG_PID``)."""
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID")
    if pid is not None and pid.strip() != str(os.getpid()):
        return None
    try:
        microseconds = int(usec, 10) if usec.strip().isascii() else 0
    except ValueError:
        return None
    return timedelta(microseconds=microseconds) if microseconds > 0 else None
