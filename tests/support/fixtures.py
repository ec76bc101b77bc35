"""Pytest fixtures that start real processes and always stop them, even when a test fails.

Import them into a ``conftest.py``::

    from tests.support.fixtures import demoapp_factory, prometheus_factory

    __all__ = ["demoapp_factory", "prometheus_factory"]

A missing Prometheus is a failure with the fix in the message, never a skip:
a skipped integration test looks like a passing one.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import pytest

from tests.support.processes import (
    INSTALL_HINT,
    PROMETHEUS_BIN,
    PROMTOOL_BIN,
    VICTORIAMETRICS_BIN,
    VICTORIAMETRICS_HINT,
    DemoApp,
    Prometheus,
    Target,
    VictoriaMetrics,
    backfill,
)


class PrometheusFactory(Protocol):
    """Starts a Prometheus (files under the test's tmp_path) and returns it once ready."""

    def __call__(
        self,
        targets: Sequence[Target] = (),
        *,
        scrape_interval: str = "1s",
        evaluation_interval: str = "1s",
        rule_files: Sequence[str] = (),
        storage_dir: Path | None = None,
        extra_args: Sequence[str] = (),
    ) -> Prometheus: ...


class DemoAppFactory(Protocol):
    """Starts a demo app in ``directory`` (default: a fresh one) and returns it once healthy."""

    def __call__(
        self,
        directory: Path | None = None,
        *,
        service: str = "web",
        traffic: float = 20.0,
        app_toml: str | None = None,
        state_file: Path | None = None,
    ) -> DemoApp: ...


def require_prometheus() -> None:
    """Fail (not skip) the test when the Debian prometheus package is not installed."""
    for binary in (PROMETHEUS_BIN, PROMTOOL_BIN):
        if not os.access(binary, os.X_OK):
            pytest.fail(f"{binary} not found: {INSTALL_HINT}", pytrace=False)


@contextlib.contextmanager
def backfilled_prometheus(
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    openmetrics_text: str,
    *,
    web_config: Mapping[str, Any] | None = None,
    client: Mapping[str, Any] | None = None,
    route_prefix: str = "",
) -> Iterator[Prometheus]:
    """A Prometheus over ``openmetrics_text`` backfilled with promtool, stopped at the end
    (for a module-scoped fixture that shares one history between a module's tests);
    ``web_config``, ``client`` and ``route_prefix`` as for
    :class:`~tests.support.processes.Prometheus`."""
    require_prometheus()
    root = tmp_path_factory.mktemp(name)
    backfill(openmetrics_text, root / "data")
    prometheus = Prometheus(
        root / "prometheus",
        storage_dir=root / "data",
        web_config=web_config,
        client=client,
        route_prefix=route_prefix,
    )
    prometheus.start()
    try:
        yield prometheus
    finally:
        prometheus.stop()


@contextlib.contextmanager
def imported_victoriametrics(
    tmp_path_factory: pytest.TempPathFactory, name: str, openmetrics_text: str
) -> Iterator[VictoriaMetrics]:
    """A VictoriaMetrics over ``openmetrics_text`` (what :func:`backfilled_prometheus`
    backfills), imported and flushed before it is handed over; stopped at the end."""
    if not os.access(VICTORIAMETRICS_BIN, os.X_OK):
        pytest.fail(f"{VICTORIAMETRICS_BIN} not found: {VICTORIAMETRICS_HINT}", pytrace=False)
    victoriametrics = VictoriaMetrics(tmp_path_factory.mktemp(name))
    victoriametrics.start()
    try:
        victoriametrics.import_history(openmetrics_text)
        yield victoriametrics
    finally:
        victoriametrics.stop()


def _stop_all(started: Sequence[tuple[str, DemoApp | Prometheus]]) -> None:
    errors: list[str] = []
    for name, instance in reversed(started):
        try:
            instance.stop()
        except Exception as error:  # noqa: BLE001 -- stop the rest, then report every failure
            errors.append(f"{name}: {error!r}")
    if errors:
        raise RuntimeError("could not stop: " + "; ".join(errors))


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[PrometheusFactory]:
    """Start real Prometheus servers; every one is stopped at teardown."""
    require_prometheus()
    started: list[tuple[str, DemoApp | Prometheus]] = []

    def make(
        targets: Sequence[Target] = (),
        *,
        scrape_interval: str = "1s",
        evaluation_interval: str = "1s",
        rule_files: Sequence[str] = (),
        storage_dir: Path | None = None,
        extra_args: Sequence[str] = (),
    ) -> Prometheus:
        name = f"prometheus-{len(started)}"
        instance = Prometheus(
            tmp_path / name,
            targets,
            scrape_interval=scrape_interval,
            evaluation_interval=evaluation_interval,
            rule_files=rule_files,
            storage_dir=storage_dir,
            extra_args=extra_args,
        )
        started.append((name, instance))
        return instance.start()

    try:
        yield make
    finally:
        _stop_all(started)


@pytest.fixture
def demoapp_factory(tmp_path: Path) -> Iterator[DemoAppFactory]:
    """Start real demo apps; every one is stopped at teardown.

    ``app_toml``, when given, is written to ``directory/app.toml`` first.
    """
    started: list[tuple[str, DemoApp | Prometheus]] = []

    def make(
        directory: Path | None = None,
        *,
        service: str = "web",
        traffic: float = 20.0,
        app_toml: str | None = None,
        state_file: Path | None = None,
    ) -> DemoApp:
        name = f"demoapp-{len(started)}-{service}"
        directory = directory or tmp_path / name
        directory.mkdir(parents=True, exist_ok=True)
        if app_toml is not None:
            (directory / "app.toml").write_text(app_toml, encoding="utf-8")
        instance = DemoApp(
            directory,
            service=service,
            traffic=traffic,
            state_file=state_file,
            log_dir=tmp_path / f"{name}-logs",
        )
        started.append((name, instance))
        return instance.start()

    try:
        yield make
    finally:
        _stop_all(started)
