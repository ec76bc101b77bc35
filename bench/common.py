"""What every benchmark shares: figures with targets, results files, processes, /proc.

Each benchmark builds a :class:`Report`, adds figures with :meth:`Report.figure`
(value, unit, target, and which way is better), prints them as it goes, one
uniform "figure, target, ratio" line each, and writes
``bench/results/<name>.json`` with the figures, the targets, the machine and
the date. A missed target is printed, never raised: benchmarks measure.

Run the benchmarks from the repository root as modules (``python -m
bench.detection --quick``) so that ``tests.support`` imports.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TextIO

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
DAEMON_SRC = REPO / "daemon"
PROMTOOL = Path("/usr/bin/promtool")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

Better = Literal["lower", "higher", "equal"]


# --- figures and the results file ----------------------------------------------------------


@dataclass
class Figure:
    """One measured figure, its target (if it has one) and how the two compare."""

    name: str
    value: float | None
    unit: str
    target: float | None = None
    better: Better = "lower"
    note: str = ""

    @property
    def ratio(self) -> float | None:
        """value / target (for "higher is better" too: then a ratio >= 1 meets it)."""
        if self.value is None or self.target is None or self.target == 0:
            return None
        return self.value / self.target

    @property
    def met(self) -> bool | None:
        if self.value is None or self.target is None:
            return None
        if self.better == "lower":
            return self.value <= self.target
        if self.better == "higher":
            return self.value >= self.target
        return math.isclose(self.value, self.target, rel_tol=1e-9)

    def line(self) -> str:
        value = _number(self.value, self.unit)
        if self.target is None:
            text = f"  {self.name:<44} {value:>16}"
        else:
            sign = {"lower": "<=", "higher": ">=", "equal": "=="}[self.better]
            target = f"target {sign} {_number(self.target, self.unit)}"
            ratio = "ratio n/a" if self.ratio is None else f"ratio {self.ratio:.3g}"
            verdict = {True: "met", False: "MISSED", None: "n/a"}[self.met]
            text = f"  {self.name:<44} {value:>16}   {target:<24} {ratio:<13} {verdict}"
        return f"{text}  ({self.note})" if self.note else text

    def record(self) -> dict[str, Any]:
        body = asdict(self)
        body["ratio"] = self.ratio
        body["met"] = self.met
        return body


def _number(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if value == 0 or 0.001 <= abs(value) < 1e7:
        shown = f"{value:.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    else:
        shown = f"{value:.3e}"
    return f"{shown} {unit}".rstrip()


@dataclass
class Report:
    """A benchmark's figures, facts and notes; printed as it goes, written at the end."""

    name: str
    quick: bool
    figures: list[Figure] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    out: TextIO = field(default=sys.stdout)

    def title(self, text: str) -> None:
        mode = "quick" if self.quick else "full"
        self.say(f"== {self.name} ({mode}): {text}")
        load = loadavg()
        self.facts["loadavg_at_start"] = load
        if load[0] > 0.5 * len(os.sched_getaffinity(0)):
            self.note(
                f"the machine is busy before this benchmark starts (load average {load[0]:.2f}"
                f" on {len(os.sched_getaffinity(0))} cores): figures may be noisy"
            )

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def figure(
        self,
        name: str,
        value: float | None,
        unit: str,
        target: float | None = None,
        better: Better = "lower",
        note: str = "",
    ) -> Figure:
        figure = Figure(name, value, unit, target, better, note)
        self.figures.append(figure)
        self.say(figure.line())
        return figure

    def fact(self, key: str, value: Any) -> None:
        """Something measured or set that is not a figure with a target (kept in the JSON)."""
        self.facts[key] = value

    def note(self, text: str) -> None:
        self.notes.append(text)
        self.say(f"  note: {text}")

    def write(self) -> Path:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"{self.name}.json"
        body = {
            "benchmark": self.name,
            "mode": "quick" if self.quick else "full",
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "duration_seconds": round(time.time() - self.started, 1),
            "machine": machine(),
            "code": code_version(),
            "figures": [f.record() for f in self.figures],
            "targets": {f.name: f.target for f in self.figures if f.target is not None},
            "loadavg_at_end": loadavg(),
            "facts": self.facts,
            "notes": self.notes,
        }
        path.write_text(json.dumps(body, indent=2, default=str) + "\n", encoding="utf-8")
        self.say(f"  wrote {path.relative_to(REPO)} ({time.time() - self.started:.0f}s)")
        return path


def machine() -> dict[str, Any]:
    """nproc, memory, CPU model, Python, kernel, and the file system of the temp directory."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory_kib = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_kib = int(line.split()[1])
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "memory_mib": memory_kib // 1024,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "tmp_filesystem": filesystem(Path(tempfile.gettempdir())),
        "prometheus": _version(["/usr/bin/prometheus", "--version"]),
        "alertmanager": _version(["/usr/bin/prometheus-alertmanager", "--version"]),
    }


def code_version() -> dict[str, Any]:
    """The commit measured, and which files of the package differed from it."""

    def git(*args: str) -> str:
        try:
            result = subprocess.run(
                ["git", "-C", str(REPO), *args],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return result.stdout.rstrip("\n")

    changed = git("status", "--porcelain", "--", "daemon", "rules")
    return {
        "commit": git("rev-parse", "HEAD").strip() or None,
        "uncommitted_in_daemon_or_rules": [line[3:] for line in changed.splitlines()],
    }


def loadavg() -> tuple[float, float, float]:
    """The 1, 5 and 15 minute load averages (other work on the machine skews figures)."""
    try:
        parts = Path("/proc/loadavg").read_text().split()
        return float(parts[0]), float(parts[1]), float(parts[2])
    except (OSError, ValueError, IndexError):
        return (0.0, 0.0, 0.0)


def _version(argv: Sequence[str]) -> str | None:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    first = (result.stdout or result.stderr).splitlines()
    return first[0].strip() if first else None


def filesystem(path: Path) -> str:
    """The type of the file system ``path`` is on (fsync cost depends on it)."""
    best, kind = "", "unknown"
    with contextlib.suppress(OSError):
        target = str(path.resolve())
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and target.startswith(parts[1]) and len(parts[1]) > len(best):
                best, kind = parts[1], parts[2]
    return kind


def arguments(
    description: str, extra: Callable[[argparse.ArgumentParser], None] | None = None
) -> argparse.Namespace:
    """--quick and --keep, plus whatever ``extra`` adds."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="reduced sizes and durations")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    if extra is not None:
        extra(parser)
    return parser.parse_args()


# --- statistics -----------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float | None:
    """The p-th percentile (0..100), nearest-rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def median(values: Iterable[float]) -> float | None:
    items = list(values)
    return statistics.median(items) if items else None


# --- processes and files --------------------------------------------------------------------


@contextlib.contextmanager
def workdir(prefix: str, keep: bool) -> Iterator[Path]:
    """A temporary directory on disk (not tmpfs where avoidable), removed unless ``keep``."""
    base = Path(tempfile.gettempdir())
    if filesystem(base) == "tmpfs" and Path("/var/tmp").is_dir():  # noqa: S108 -- fsync must be real
        base = Path("/var/tmp")  # noqa: S108
    path = Path(tempfile.mkdtemp(prefix=f"rollbackd-bench-{prefix}-", dir=base))
    try:
        yield path
    finally:
        if keep:
            print(f"  kept {path}", flush=True)
        else:
            shutil.rmtree(path, ignore_errors=True)


def child_env() -> dict[str, str]:
    """The environment for our own Python children: the source roots on PYTHONPATH."""
    env = dict(os.environ)
    paths = [str(REPO), str(DAEMON_SRC), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("NOTIFY_SOCKET", None)
    return env


def stop(process: subprocess.Popen[Any], timeout: float = 15.0) -> int | None:
    """SIGTERM, wait up to ``timeout``, then SIGKILL; the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


def start_rollbackd(
    root: Path, config: Path, stack: contextlib.ExitStack
) -> subprocess.Popen[bytes]:
    """``rollbackd run`` in ``root``, logging to rollbackd.log; stopped as ``stack`` closes."""
    log = (root / "rollbackd.log").open("wb")
    stack.callback(log.close)
    daemon = subprocess.Popen(
        [sys.executable, "-m", "rollbackd", "run", "--config", str(config)],
        cwd=root,
        env=child_env(),
        stdout=log,
        stderr=log,
        stdin=subprocess.DEVNULL,
    )
    stack.callback(stop, daemon)
    return daemon


def wait_until(check: Callable[[], bool], timeout: float, what: str, every: float = 0.1) -> None:
    """Poll ``check`` until it holds; TimeoutError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(every)
    raise TimeoutError(f"{what} (waited {timeout:g}s)")


def rss_kib_children() -> int:
    """Peak RSS of waited-for children (ru_maxrss, KiB on Linux)."""
    return int(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)


# --- /proc ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcSample:
    """One look at a process: CPU seconds so far (user + system), memory, threads."""

    at: float
    cpu_seconds: float
    rss_kib: int
    hwm_kib: int
    threads: int


def proc_sample(pid: int) -> ProcSample | None:
    """Read /proc/<pid>/stat and /proc/<pid>/status; None once the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    values: dict[str, int] = {}
    for line in status.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM", "Threads"):
            values[key] = int(rest.split()[0])
    return ProcSample(
        at=time.monotonic(),
        cpu_seconds=(utime + stime) / CLOCK_TICKS,
        rss_kib=values.get("VmRSS", 0),
        hwm_kib=values.get("VmHWM", 0),
        threads=values.get("Threads", 0),
    )


def cpu_seconds(pid: int) -> float | None:
    sample = proc_sample(pid)
    return sample.cpu_seconds if sample else None


# --- backfill -------------------------------------------------------------------------------


BLOCK_SECONDS = 7200


class OpenMetricsWriter:
    """Streams OpenMetrics for ``promtool tsdb create-blocks-from openmetrics``, one file per 2h.

    ``tests.support.processes.openmetrics_family`` builds the whole text in
    memory, which is fine for tests and too much for millions of samples, so
    the benchmarks stream the same format: a ``# TYPE`` line per family, then
    its series, samples in ascending time, seconds since the epoch, and
    ``# EOF`` at the end (no blank lines).

    The samples are split into one file per 2h block of the epoch: promtool
    2.42 parses its whole input once per 2h block it creates, so one file of
    a week costs 84 passes over the week; a file per block costs one.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._files: dict[int, TextIO] = {}
        self._typed: set[tuple[int, str]] = set()
        self._family = ""
        self._kind = "gauge"
        self.samples = 0
        self.series = 0

    def family(self, name: str, kind: Literal["counter", "gauge"]) -> None:
        self._family = name.removesuffix("_total") if kind == "counter" else name
        self._kind = kind

    def _file(self, block: int) -> TextIO:
        handle = self._files.get(block)
        if handle is None:
            path = self.directory / f"block-{block}.om"
            handle = path.open("w", encoding="utf-8", buffering=1 << 18)
            self._files[block] = handle
        if (block, self._family) not in self._typed:
            handle.write(f"# TYPE {self._family} {self._kind}\n")
            self._typed.add((block, self._family))
        return handle

    def series_points(
        self,
        sample_name: str,
        labels: Mapping[str, str],
        times: Sequence[float],
        values: Sequence[float],
    ) -> None:
        rendered = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        prefix = f"{sample_name}{{{rendered}}} "
        lines: dict[int, list[str]] = {}
        for moment, value in zip(times, values, strict=True):
            lines.setdefault(int(moment // BLOCK_SECONDS), []).append(
                f"{prefix}{value!r} {moment:.0f}\n"
            )
        for block, text in lines.items():
            self._file(block).write("".join(text))
        self.samples += len(times)
        self.series += 1

    def close(self) -> list[Path]:
        """End every file with ``# EOF``; the files, in time order."""
        for handle in self._files.values():
            handle.write("# EOF\n")
            handle.close()
        return [self.directory / f"block-{b}.om" for b in sorted(self._files)]


def promtool_backfill(sources: Sequence[Path], storage: Path, timeout: float = 900.0) -> float:
    """``promtool tsdb create-blocks-from openmetrics`` per file, one per core; wall seconds."""
    if not PROMTOOL.exists():
        raise RuntimeError(f"{PROMTOOL} is missing: install the Debian package prometheus")
    storage.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    def one(source: Path) -> None:
        argv = [str(PROMTOOL), "tsdb", "create-blocks-from", "openmetrics", "--quiet"]
        result = subprocess.run(
            [*argv, str(source), str(storage)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"promtool failed on {source.name} ({result.returncode}):"
                f" {result.stdout}{result.stderr}"
            )
        source.unlink()

    with ThreadPoolExecutor(max_workers=len(os.sched_getaffinity(0))) as pool:
        for future in [pool.submit(one, source) for source in sources]:
            future.result(timeout=timeout)
    return time.monotonic() - started


def counter_series(
    start: float, count: int, step: float, per_second: Callable[[float], float]
) -> tuple[list[float], list[float]]:
    """Times and values of a counter growing at ``per_second(t)`` over each step."""
    times = [start + i * step for i in range(count)]
    values: list[float] = []
    total = 0.0
    for index, moment in enumerate(times):
        if index:
            total += per_second(moment) * step
        values.append(round(total, 3))
    return times, values


def run_json(argv: Sequence[str], timeout: float, cwd: Path = REPO) -> dict[str, Any]:
    """Run one of our own child processes that prints a JSON object as its last line."""
    result = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=child_env(),
        check=False,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(
            f"{' '.join(argv[:4])}... exited {result.returncode}:\n"
            f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
        )
    body: dict[str, Any] = json.loads(lines[-1])
    return body
