"""Shared fixtures: the repository's own files, and a runner for the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "tests" / "fixtures"
"""Webhook bodies captured from a real Alertmanager 0.25 (copied from shared/examples)."""


@pytest.fixture
def repo() -> Path:
    """The repository root (for config.example.toml and rules/)."""
    return REPO


RunCli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def run_cli(tmp_path: Path) -> RunCli:
    """Run ``rollbackd`` as a user would, in a fresh working directory."""

    def run(
        *args: str, env: Mapping[str, str] | None = None, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        environment = {k: v for k, v in os.environ.items() if not k.startswith("ROLLBACKD_")}
        environment.update(env or {})
        return subprocess.run(
            [sys.executable, "-m", "rollbackd", *args],
            capture_output=True,
            text=True,
            cwd=cwd or tmp_path,
            env=environment,
            timeout=60,
            check=False,
        )

    return run
