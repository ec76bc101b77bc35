"""Run every benchmark (``--quick`` for the reduced ones) and print one summary.

The footprint benchmark idles ``rollbackd run`` for 5 minutes (quick: 30 s) and
measures that process's own CPU time and RSS, so by default it runs in the
background while the others run one after the other (``--sequential`` runs it
alone, after them, and takes that much longer). Each benchmark is a separate
process (``python -m bench.NAME``) and writes ``bench/results/NAME.json``; a
benchmark that fails is reported and the others still run. Nothing fails
because a target is missed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from typing import Any

from bench.common import REPO, RESULTS, Figure, child_env, machine, stop

ORDER = ("detection", "ingest", "failover", "stall", "cycle", "backtest", "scenarios")
BACKGROUND = "footprint"
TIMEOUT = {"quick": 300.0, "full": 1200.0}


def run_one(name: str, quick: bool, extra: list[str], timeout: float) -> int:
    argv = [sys.executable, "-m", f"bench.{name}", *(["--quick"] if quick else []), *extra]
    try:
        return subprocess.run(
            argv, cwd=REPO, env=child_env(), timeout=timeout, check=False
        ).returncode
    except subprocess.TimeoutExpired:
        print(f"!! {name}: stopped after {timeout:.0f}s", flush=True)
        return -1


def summary(names: list[str], since: float) -> list[dict[str, Any]]:
    """Every figure with a target, from the results files written in this run."""
    rows: list[dict[str, Any]] = []
    for name in names:
        path = RESULTS / f"{name}.json"
        if not path.exists() or path.stat().st_mtime < since:
            rows.append({"benchmark": name, "missing": True})
            continue
        body = json.loads(path.read_text())
        for raw in body["figures"]:
            if raw.get("target") is None:
                continue
            figure = Figure(
                raw["name"], raw["value"], raw["unit"], raw["target"], raw["better"], raw["note"]
            )
            rows.append({"benchmark": name, "figure": figure})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--quick", action="store_true", help="reduced sizes: under 2 minutes")
    parser.add_argument("--sequential", action="store_true", help="run footprint alone, last")
    parser.add_argument("--only", help="comma-separated benchmark names")
    args = parser.parse_args()
    quick: bool = args.quick
    names = [*ORDER, BACKGROUND]
    if args.only:
        wanted = {n.strip() for n in args.only.split(",")}
        names = [n for n in names if n in wanted]
    timeout = TIMEOUT["quick" if quick else "full"]
    started = time.time()
    info = machine()
    print(
        f"rollbackd benchmarks ({'quick' if quick else 'full'}) on {info['nproc']} cores"
        f" ({info['cpu_model']}), {info['memory_mib']} MiB, Python {info['python']}",
        flush=True,
    )
    codes: dict[str, int] = {}
    with contextlib.ExitStack() as stack:
        background: subprocess.Popen[bytes] | None = None
        log = stack.enter_context(tempfile.TemporaryFile())
        if BACKGROUND in names and not args.sequential:
            background = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    f"bench.{BACKGROUND}",
                    *(["--quick"] if quick else []),
                    "--alongside",
                ],
                cwd=REPO,
                env=child_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            stack.callback(stop, background, 30.0)
            print("(footprint runs in the background; its output comes last)", flush=True)
        for name in names:
            if name == BACKGROUND and background is not None:
                continue
            began = time.monotonic()
            codes[name] = run_one(name, quick, [], timeout)
            print(f"({name}: {time.monotonic() - began:.0f}s)", flush=True)
        if background is not None:
            try:
                codes[BACKGROUND] = background.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                codes[BACKGROUND] = -1
            log.seek(0)
            sys.stdout.write(log.read().decode(errors="replace"))
            sys.stdout.flush()
    elapsed = time.time() - started
    print(f"\n== summary ({'quick' if quick else 'full'}, {elapsed:.0f}s): figures with targets")
    for row in summary(names, started):
        if row.get("missing"):
            print(f"  {row['benchmark']}: no results (exit {codes.get(row['benchmark'])})")
            continue
        print(f"  {row['benchmark']:<10}{row['figure'].line()}")
    failed = [n for n, c in codes.items() if c != 0]
    if failed:
        print(f"benchmarks that did not finish: {', '.join(failed)}")
    # Measure, never assert: a missed target is printed, not an exit status; a crash is.
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
