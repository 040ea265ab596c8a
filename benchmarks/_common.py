"""Shared pieces of the benchmark scripts.

* :func:`loopback_server` runs ``tests.loopback_server`` as a separate process.
* Every measured run happens in a fresh Python process (:func:`run_child`), so its peak
  RSS belongs to that one case. The child runs :func:`child_main`, which times the case
  and prints one ``RESULT {json}`` line.
* :class:`CaseStats` and :func:`print_table` turn the runs into the result table.

Throughput is instance bytes (N x SIZE, multipart framing not counted) divided by the wall
time of the case inside its process (after imports, including client set-up). MB is
10**6 bytes; RSS is reported in MiB.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
MB = 1_000_000
MIB = 1024 * 1024
RESULT_PREFIX = "RESULT "
CHILD_TIMEOUT = 900.0

Spec = dict[str, Any]


# --------------------------------------------------------------------------------------------
# Command line


def parse_size(text: str) -> int:
    """``2m`` -> 2 MiB; suffixes k, m, g are binary; a bare number is bytes."""
    units = {"k": 1024, "m": MIB, "g": 1024 * MIB}
    cleaned = text.strip().lower().removesuffix("ib").removesuffix("b")
    if cleaned and cleaned[-1] in units:
        return int(float(cleaned[:-1]) * units[cleaned[-1]])
    return int(cleaned)


def base_parser(description: str) -> argparse.ArgumentParser:
    """Options every benchmark script takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--count", type=int, default=512, help="instances (default 512)")
    parser.add_argument(
        "--size", type=parse_size, default=2 * MIB, help="bytes per instance (default 2m)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per case (default 3)")
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        help="where a scratch directory is made and removed again "
        "(default /tmp; /dev/shm keeps the disk out of the measurement)",
    )
    parser.add_argument(
        "--cases", default=None, help="comma-separated case letters to run (default: all)"
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return parser


def selected(cases: Mapping[str, Any], wanted: str | None) -> list[str]:
    """Case keys to run, in table order."""
    if not wanted:
        return list(cases)
    keys = [key.strip() for key in wanted.split(",") if key.strip()]
    unknown = [key for key in keys if key not in cases]
    if unknown:
        raise SystemExit(f"unknown case(s): {', '.join(unknown)}; choose from {', '.join(cases)}")
    return [key for key in cases if key in keys]


# --------------------------------------------------------------------------------------------
# Processes and directories


@contextlib.contextmanager
def loopback_server(*args: str) -> Iterator[str]:
    """Run ``python -m tests.loopback_server`` on a free port; yield its base URL."""
    command = [sys.executable, "-m", "tests.loopback_server", "--port", "0", *args]
    proc = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("READY "):
            raise RuntimeError(f"loopback server did not start (said {line!r})")
        yield line.split(maxsplit=1)[1].strip()
    finally:
        if proc.poll() is None:
            proc.terminate()  # SIGTERM to this one process
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


@contextlib.contextmanager
def scratch_dir(parent: Path | None) -> Iterator[Path]:
    """A fresh directory under ``parent`` (default /tmp), removed on exit."""
    base = parent if parent is not None else Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="dicomweb-bench-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def clear_dir(path: Path) -> None:
    """Remove ``path`` and flush the page cache's dirty pages before the next run."""
    shutil.rmtree(path, ignore_errors=True)
    os.sync()


def run_child(module: str, spec: Spec) -> dict[str, Any]:
    """Run one case in a new interpreter; its ``RESULT`` record, or ``{"error": ...}``."""
    command = [sys.executable, "-m", module, "--child", json.dumps(spec)]
    try:
        proc = subprocess.run(
            command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=CHILD_TIMEOUT
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {CHILD_TIMEOUT:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            result: dict[str, Any] = json.loads(line[len(RESULT_PREFIX) :])
            return result
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"exit {proc.returncode}: {tail[:200]}"}


# --------------------------------------------------------------------------------------------
# Child side


@dataclass
class Outcome:
    """What one case reports about its run.

    ``instances`` and ``bytes`` are what the case saw arrive or leave (None when it has no
    way to tell); the parent checks them against the expected study.
    """

    seconds: float
    instances: int | None = None
    bytes: int | None = None
    rss_of_children: bool = False


def timed(func: Callable[[], tuple[int | None, int | None]]) -> Outcome:
    """Run ``func`` (returning instances, bytes) and time it with a monotonic clock."""
    start = time.perf_counter()
    instances, size = func()
    return Outcome(time.perf_counter() - start, instances, size)


def peak_rss_mib(children: bool = False) -> float:
    """Peak resident set size of this process (or of its waited-for children)."""
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    kib = resource.getrusage(who).ru_maxrss  # KiB on Linux
    return kib * 1024 / MIB


def child_main(spec_json: str, cases: Mapping[str, Callable[[Spec], Outcome]]) -> int:
    """Entry point of a child process: run the case named in the spec, print its result."""
    spec: Spec = json.loads(spec_json)
    outcome = cases[spec["case"]](spec)
    record = {
        "seconds": outcome.seconds,
        "instances": outcome.instances,
        "bytes": outcome.bytes,
        "rss_mib": peak_rss_mib(outcome.rss_of_children),
    }
    print(RESULT_PREFIX + json.dumps(record), flush=True)
    return 0


# --------------------------------------------------------------------------------------------
# Results


@dataclass
class CaseStats:
    """Every run of one case."""

    label: str
    speeds: list[float] = field(default_factory=list)  # MB/s
    rss: list[float] = field(default_factory=list)  # MiB
    errors: list[str] = field(default_factory=list)

    def add(self, result: Mapping[str, Any], count: int, size: int) -> str:
        """Record a child's result after checking it saw the whole study; a progress note."""
        error = result.get("error")
        if error is None:
            instances, seen = result.get("instances"), result.get("bytes")
            if instances is not None and instances != count:
                error = f"saw {instances} instances, expected {count}"
            elif seen is not None and seen < count * size:
                error = f"saw {seen} bytes, expected at least {count * size}"
        if error is not None:
            self.errors.append(str(error))
            return f"FAILED: {error}"
        speed = count * size / MB / float(result["seconds"])
        self.speeds.append(speed)
        self.rss.append(float(result["rss_mib"]))
        return f"{speed:8.0f} MB/s  {result['rss_mib']:7.0f} MiB"

    @property
    def median(self) -> float | None:
        return statistics.median(self.speeds) if self.speeds else None


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def print_table(title: str, rows: Sequence[CaseStats], baseline: CaseStats | None) -> None:
    """case | median MB/s | min..max | peak RSS MiB | ratio to the baseline's median."""
    base = baseline.median if baseline is not None else None
    header = ("case", "median MB/s", "min..max MB/s", "peak RSS MiB", "vs bare httpx")
    lines: list[tuple[str, ...]] = []
    for row in rows:
        if row.median is None:
            lines.append((row.label, "failed", row.errors[0][:40] if row.errors else "", "", ""))
            continue
        ratio = f"{row.median / base:.2f}x" if base else "n/a"
        spread = f"{min(row.speeds):.0f}..{max(row.speeds):.0f}"
        if row.errors:
            spread += f" ({len(row.errors)} failed)"
        lines.append((row.label, f"{row.median:.0f}", spread, f"{max(row.rss):.0f}", ratio))
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]

    def fmt(cells: tuple[str, ...]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
        return "| " + " | ".join([first, *rest]) + " |"

    print(f"\n{title}\n")
    print(fmt(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for line in lines:
        print(fmt(line))
    print(flush=True)


def environment() -> str:
    """One line describing the machine and the versions measured."""
    from importlib.metadata import PackageNotFoundError, version

    names = ("dicomweb-async", "httpx", "httpcore", "anyio", "dicomweb-client", "requests")
    parts = [f"Python {platform.python_version()}", f"{os.cpu_count()} CPUs"]
    for name in names:
        with contextlib.suppress(PackageNotFoundError):
            parts.append(f"{name} {version(name)}")
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        first = subprocess.run(
            ["curl", "--version"], capture_output=True, text=True, check=True
        ).stdout.split()
        parts.append(f"curl {first[1]}")
    return ", ".join(parts)
