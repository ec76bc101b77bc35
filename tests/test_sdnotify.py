"""The systemd notify client against real AF_UNIX datagram sockets."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from rollbackd.sdnotify import STATUS_MAX_CHARS, SystemdNotifier


class Receiver:
    """The systemd end: a bound datagram socket that collects what arrives."""

    def __init__(self, sock: socket.socket, notify_socket: str) -> None:
        self.sock = sock
        self.notify_socket = notify_socket

    def notifier(self, **extra: str) -> SystemdNotifier:
        return SystemdNotifier({"NOTIFY_SOCKET": self.notify_socket, **extra})

    def datagram(self) -> bytes:
        self.sock.settimeout(2)
        return self.sock.recv(65536)

    def assert_empty(self) -> None:
        self.sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            self.sock.recv(65536)


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    path = tmp_path / "notify"
    assert len(os.fsencode(path)) < 108, "AF_UNIX paths are limited to 107 bytes"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        yield Receiver(sock, str(path))


@pytest.fixture
def abstract_receiver() -> Iterator[Receiver]:
    name = f"rollbackd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        yield Receiver(sock, "@" + name)


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("ready", b"READY=1"),
        ("watchdog", b"WATCHDOG=1"),
        ("stopping", b"STOPPING=1"),
    ],
)
def test_each_state_is_one_exact_datagram(receiver: Receiver, method: str, expected: bytes) -> None:
    notifier = receiver.notifier()
    assert notifier.enabled
    assert getattr(notifier, method)() is True
    assert receiver.datagram() == expected
    receiver.assert_empty()


def test_status_is_sent_as_is_when_short(receiver: Receiver) -> None:
    assert receiver.notifier().status("watching 3 services, 0 open incidents")
    assert receiver.datagram() == b"STATUS=watching 3 services, 0 open incidents"


def test_status_is_one_line_so_it_cannot_inject_other_assignments(receiver: Receiver) -> None:
    assert receiver.notifier().status("rolling back web\nREADY=1\r\n\tto v1\x00")
    assert receiver.datagram() == b"STATUS=rolling back web READY=1 to v1"
    receiver.assert_empty()


def test_status_is_cut_to_200_characters(receiver: Receiver) -> None:
    assert receiver.notifier().status("é" * 300)
    sent = receiver.datagram().decode("utf-8")
    value = sent.removeprefix("STATUS=")
    assert len(value) == STATUS_MAX_CHARS == 200
    assert value == "é" * 199 + "…"


def test_status_of_exactly_200_characters_is_not_cut(receiver: Receiver) -> None:
    assert receiver.notifier().status("x" * 200)
    assert receiver.datagram() == b"STATUS=" + b"x" * 200


def test_reloading_carries_the_monotonic_clock(receiver: Receiver) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert receiver.notifier().reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = receiver.datagram().split(b"\n")
    assert first == b"RELOADING=1"
    key, _, usec = second.partition(b"=")
    assert key == b"MONOTONIC_USEC"
    assert usec.isdigit()
    assert before <= int(usec) <= after


def test_abstract_socket(abstract_receiver: Receiver) -> None:
    notifier = abstract_receiver.notifier()
    assert notifier.enabled
    assert notifier.ready()
    assert abstract_receiver.datagram() == b"READY=1"
    assert notifier.status("ok")
    assert abstract_receiver.datagram() == b"STATUS=ok"


def test_notify_sends_several_assignments_in_one_datagram(receiver: Receiver) -> None:
    assert receiver.notifier().notify("READY=1", "STATUS=up")
    assert receiver.datagram() == b"READY=1\nSTATUS=up"
    receiver.assert_empty()


def test_reads_the_process_environment_by_default(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", receiver.notify_socket)
    assert SystemdNotifier().ready()
    assert receiver.datagram() == b"READY=1"


@pytest.mark.parametrize("value", [None, "", "@", "relative/path", "vsock:2:1234"])
def test_without_a_usable_socket_every_call_is_a_no_op(value: str | None) -> None:
    environ = {} if value is None else {"NOTIFY_SOCKET": value}
    notifier = SystemdNotifier(environ)
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.status("x") is False
    assert notifier.watchdog() is False
    assert notifier.stopping() is False
    assert notifier.reloading() is False


def test_a_missing_socket_file_does_not_raise(tmp_path: Path) -> None:
    notifier = SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert notifier.enabled
    assert notifier.ready() is False
    assert notifier.watchdog() is False


def test_a_path_that_is_not_a_socket_does_not_raise(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_text("not a socket")
    assert SystemdNotifier({"NOTIFY_SOCKET": str(plain)}).ready() is False


def test_a_closed_receiver_does_not_raise(tmp_path: Path) -> None:
    path = tmp_path / "closed"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
    assert SystemdNotifier({"NOTIFY_SOCKET": str(path)}).stopping() is False


def test_a_path_too_long_for_af_unix_does_not_raise() -> None:
    assert SystemdNotifier({"NOTIFY_SOCKET": "/" + "x" * 200}).ready() is False


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "60000000"}, timedelta(seconds=60)),
        ({"WATCHDOG_USEC": "1500"}, timedelta(microseconds=1500)),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": str(os.getpid())}, timedelta(seconds=60)),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "sixty"}, None),
        ({"WATCHDOG_USEC": ""}, None),
        ({"WATCHDOG_PID": str(os.getpid())}, None),
    ],
)
def test_watchdog_interval(environ: dict[str, str], expected: timedelta | None) -> None:
    assert SystemdNotifier(environ).watchdog_interval() == expected
