"""Running ``rollbackd`` as a user does: a child process, without the test's own settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def rollbackd(
    *args: str, cwd: Path, env: Mapping[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``python -m rollbackd ARGS`` in ``cwd``; no ``ROLLBACKD_…`` variable of ours leaks in."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("ROLLBACKD_")}
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "rollbackd", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=environment,
        timeout=timeout,
        check=False,
    )


def rfc3339(moment: datetime | float) -> str:
    """An instant (or unix seconds) as the RFC 3339 text the commands take, in UTC."""
    if not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment, UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def backtest(config: Path, start: float, end: float, *extra: str) -> list[str]:
    """``rollbackd backtest`` of ``config`` from ``start`` to ``end`` every 15 s: its lines."""
    window = ["--start", rfc3339(start), "--end", rfc3339(end), "--step", "15s"]
    result = rollbackd(
        "backtest", "--config", str(config), *window, *extra, cwd=config.parent, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def actions_by_service(lines: list[str]) -> dict[str, list[dict[str, Any]]]:
    """The action records of ``backtest --json`` output, by service, in time order."""
    by_service: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        record = json.loads(line)
        if record.get("type") == "action":
            by_service.setdefault(record["service"], []).append(record)
    return by_service
