"""Fixtures of the integration tests: real demo apps, Prometheus servers and a proxy."""

from collections.abc import Iterator

import pytest

from tests.support.fixtures import demoapp_factory, prometheus_factory
from tests.support.tinyproxy import TinyProxy, require_tinyproxy

__all__ = ["demoapp_factory", "prometheus_factory", "proxy"]


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TinyProxy]:
    """A real forward proxy (tinyproxy) on loopback, shared by a module's tests."""
    require_tinyproxy()
    with TinyProxy(tmp_path_factory.mktemp("proxy")) as running:
        yield running
