"""Fixtures of the integration tests: real demo apps and Prometheus servers."""

from tests.support.fixtures import demoapp_factory, prometheus_factory

__all__ = ["demoapp_factory", "prometheus_factory"]
